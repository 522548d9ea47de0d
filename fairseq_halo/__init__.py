"""fairseq-halo: Halo training and PredPatt extraction models as a fairseq ``--user-dir`` plugin.

Importing the package registers with fairseq the ``halo_cross_entropy`` criterion, the
``halo_lstm`` architectures and the selective-decoding ``halo_modelz``/``halo_modelp``
architectures, and allow-lists the globals of fairseq checkpoints for torch's weights-only
loading. Modules are imported relatively, so the package registers once even when
it is reachable under a second name.
"""

from . import checkpoint  # noqa: F401  (allow-lists checkpoint globals on import)
from . import criterions, models  # noqa: F401  (registers components with fairseq)

__version__ = "0.1.0"
