"""Residual LSTM stack, Luong attention and the halo_lstm decoder on small deterministic tensors.

References are built from the same weights by hand: separate ``nn.LSTM`` runs for the stack,
explicit loops for the attention scores, and the formula h = tanh(W_c [c; s]) for the decoder.
"""

from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from fairseq_halo.models.halo_lstm import HaloLSTMConfig, check_config, halo_lstm_small
from fairseq_halo.modules import LuongAttention, ResidualLSTMStack

SOURCES = ["w1 w3 w2", "w6 w4", "w5 w9 w7 w8"]


def random_state(layers, batch, hidden, directions=1):
    return [(torch.randn(directions, batch, hidden), torch.randn(directions, batch, hidden))
            for _ in range(layers)]


# ResidualLSTMStack


def test_residual_stack_skips_first_layer():
    # Input 3 and hidden 4 differ, so only layers 2 and 3 add their input.
    torch.manual_seed(0)
    stack = ResidualLSTMStack(3, 4, num_layers=3)
    x = torch.randn(5, 2, 3)  # (T, B, input)
    y, _ = stack(x)

    with torch.no_grad():
        x1, _ = stack.layers[0](x)
        y2, _ = stack.layers[1](x1)
        x2 = y2 + x1
        y3, _ = stack.layers[2](x2)
        expected = y3 + x2
    assert stack.residual == [False, True, True]
    assert torch.allclose(y, expected, atol=1e-6)


def test_residual_stack_same_size_all_layers():
    torch.manual_seed(0)
    stack = ResidualLSTMStack(4, 4, num_layers=2)
    x = torch.randn(5, 2, 4)
    y, _ = stack(x)

    with torch.no_grad():
        y1, _ = stack.layers[0](x)
        x1 = y1 + x
        y2, _ = stack.layers[1](x1)
        expected = y2 + x1
    assert stack.residual == [True, True]
    assert torch.allclose(y, expected, atol=1e-6)


def test_residual_stack_residual_off():
    torch.manual_seed(0)
    stack = ResidualLSTMStack(4, 4, num_layers=2, residual=False)
    x = torch.randn(5, 2, 4)
    y, _ = stack(x)

    with torch.no_grad():
        expected, _ = stack.layers[1](stack.layers[0](x)[0])
    assert stack.residual == [False, False]
    assert torch.allclose(y, expected, atol=1e-6)


def test_residual_stack_bidirectional_sizes():
    # Output 2 * 3 = 6 per layer: layer 1 takes input 4 (no residual), layer 2 takes 6 (residual).
    torch.manual_seed(0)
    stack = ResidualLSTMStack(4, 3, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 4)
    y, final = stack(x)

    with torch.no_grad():
        y1, _ = stack.layers[0](x)
        y2, _ = stack.layers[1](y1)
        expected = y2 + y1
    assert stack.output_size == 6
    assert stack.residual == [False, True]
    assert torch.allclose(y, expected, atol=1e-6)
    assert final[0][0].shape == (2, 2, 3)


def test_residual_stack_step_equals_forward():
    torch.manual_seed(0)
    stack = ResidualLSTMStack(3, 4, num_layers=3)
    x = torch.randn(5, 2, 3)
    state = random_state(3, 2, 4)
    y, final = stack(x, state)

    step_state = [(h[0], c[0]) for h, c in state]
    outputs = []
    for t in range(5):
        y_t, step_state = stack.step(x[t], step_state)
        outputs.append(y_t)
    assert torch.allclose(torch.stack(outputs), y, atol=1e-6)
    for (h, c), (step_h, step_c) in zip(final, step_state):
        assert torch.allclose(step_h, h[0], atol=1e-6)
        assert torch.allclose(step_c, c[0], atol=1e-6)


def test_residual_stack_lengths_final_state():
    # Sequence 2 has 3 real steps of 5, so its final states are those of step 3.
    torch.manual_seed(0)
    stack = ResidualLSTMStack(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    y, final = stack(x, lengths=torch.tensor([5, 3]))
    alone, alone_final = stack(x[:3, 1:2])

    assert torch.allclose(y[:3, 1:2], alone, atol=1e-6)
    for (h, c), (alone_h, alone_c) in zip(final, alone_final):
        assert torch.allclose(h[:, 1:2], alone_h, atol=1e-6)
        assert torch.allclose(c[:, 1:2], alone_c, atol=1e-6)


# LuongAttention


def test_luong_attention_formula():
    torch.manual_seed(0)
    attention = LuongAttention(query_size=4, source_size=3)
    W_a = attention.key_proj.weight  # (4, 3)
    s = torch.randn(2, 3, 4)  # (B, T, query)
    h = torch.randn(2, 5, 3)  # (B, S, source)
    padding_mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    context, align = attention(s, attention.keys(h), h, padding_mask)

    for b in range(2):
        real = [j for j in range(5) if not padding_mask[b, j]]
        for t in range(3):
            # score_j = s_t^T W_a h_j over the real positions only.
            scores = torch.stack([s[b, t] @ W_a @ h[b, j] for j in real])
            weights = torch.softmax(scores, dim=0)
            expected_context = sum(w * h[b, j] for w, j in zip(weights, real))
            assert torch.allclose(align[b, t, real], weights, atol=1e-6)
            assert torch.allclose(context[b, t], expected_context, atol=1e-6)
    # Padded positions get exactly zero weight.
    assert torch.equal(align[1, :, 3:], torch.zeros(3, 2))


def test_luong_attention_rows_sum_one():
    torch.manual_seed(0)
    attention = LuongAttention(query_size=4, source_size=3)
    h = torch.randn(2, 5, 3)
    _, align = attention(torch.randn(2, 3, 4), attention.keys(h), h)

    assert torch.allclose(align.sum(-1), torch.ones(2, 3))


# The halo_lstm decoder


def encode(model, sample):
    net_input = sample["net_input"]
    return model.encoder(net_input["src_tokens"], net_input["src_lengths"])


def test_decoder_features_formula(build_model, make_batch):
    model = build_model().eval()
    sample = make_batch(SOURCES)
    encoder_out = encode(model, sample)
    prev = sample["net_input"]["prev_output_tokens"]
    decoder = model.decoder
    h, extra = decoder.extract_features(prev, encoder_out)

    with torch.no_grad():
        # s: the top decoder LSTM states, started from the encoder's final states.
        state = [(hh.unsqueeze(0), cc.unsqueeze(0))
                 for hh, cc in zip(encoder_out.final_h, encoder_out.final_c)]
        s, _ = decoder.lstm(decoder.embed_tokens(prev).transpose(0, 1), state)
        s = s.transpose(0, 1)  # (B, T, hidden)
        values = encoder_out.outputs.transpose(0, 1)  # (B, S, C_enc)
        scores = torch.einsum("btm,mn,bsn->bts", s, decoder.attention.key_proj.weight, values)
        scores = scores.masked_fill(encoder_out.padding_mask.t().unsqueeze(1), float("-inf"))
        align = torch.softmax(scores, dim=-1)
        c = align @ values  # (B, T, C_enc)
        expected = torch.tanh(torch.cat([c, s], dim=-1) @ decoder.attentional.weight.t())
    assert h.shape == (3, 7, 4)
    assert torch.allclose(h, expected, atol=1e-6)
    assert torch.allclose(extra["attn"][0], align, atol=1e-6)


@pytest.mark.parametrize("input_feeding", [False, True])
def test_decoder_features_inside_unit_cube(build_model, make_batch, input_feeding):
    # Training mode with dropout: dropout acts before W_c, never after the tanh.
    model = build_model(input_feeding=input_feeding, dropout=0.5).train()
    sample = make_batch(SOURCES)
    torch.manual_seed(1)
    h, _ = model.extract_features(**sample["net_input"])

    assert (h.abs() < 1).all()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("input_feeding", [False, True])
def test_incremental_matches_full_forward(build_model, make_batch, input_feeding, bidirectional):
    model = build_model(input_feeding=input_feeding, encoder_bidirectional=bidirectional).eval()
    sample = make_batch(SOURCES)
    encoder_out = encode(model, sample)
    prev = sample["net_input"]["prev_output_tokens"]  # (B, T)
    full, _ = model.decoder(prev, encoder_out)  # (B, T, V)

    incremental_state = {}
    for t in range(prev.size(1)):
        step, _ = model.decoder(prev[:, :t + 1], encoder_out, incremental_state=incremental_state)
        assert torch.allclose(step[:, 0], full[:, t], atol=1e-5), f"step {t}"


@pytest.mark.parametrize("new_order", [[2, 0, 1], [1, 1, 0]])
@pytest.mark.parametrize("input_feeding", [False, True])
def test_incremental_after_reorder(build_model, make_batch, input_feeding, new_order):
    # Two steps on the batch, then a beam-search reorder, then the remaining steps.
    model = build_model(input_feeding=input_feeding).eval()
    sample = make_batch(SOURCES)
    encoder_out = encode(model, sample)
    prev = sample["net_input"]["prev_output_tokens"]
    order = torch.tensor(new_order)
    reordered_out = model.encoder.reorder_encoder_out(encoder_out, order)
    full, _ = model.decoder(prev[order], reordered_out)

    incremental_state = {}
    for t in range(2):
        model.decoder(prev[:, :t + 1], encoder_out, incremental_state=incremental_state)
    model.decoder.reorder_incremental_state_scripting(incremental_state, order)
    for t in range(2, prev.size(1)):
        step, _ = model.decoder(prev[order, :t + 1], reordered_out,
                                incremental_state=incremental_state)
        assert torch.allclose(step[:, 0], full[:, t], atol=1e-5), f"step {t}"


def test_encoder_padding_does_not_leak(build_model, make_batch):
    # A sentence's encoding is the same alone and left-padded in a batch.
    model = build_model().eval()
    batch = make_batch(SOURCES)
    row = int((batch["id"] == 1).nonzero())  # the collater sorts by source length
    batch_out = encode(model, batch)
    alone_out = encode(model, make_batch(SOURCES[1:2]))

    # Sentence 2 has 2 words + </s>. Outputs are right-padded after the encoder.
    assert torch.allclose(batch_out.outputs[:3, row], alone_out.outputs[:, 0], atol=1e-6)
    assert torch.allclose(batch_out.final_h[:, row], alone_out.final_h[:, 0], atol=1e-6)
    assert batch_out.padding_mask[:, row].tolist() == [False, False, False, True, True]


def test_shared_embeddings_tied(build_model):
    model = build_model(share_decoder_input_output_embed=True, decoder_out_embed_dim=6)

    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight


# Configuration


@pytest.mark.parametrize("settings, message", [
    (dict(decoder_layers=1), "--encoder-layers \\(2\\) must equal --decoder-layers \\(1\\)"),
    (dict(encoder_layers=0, decoder_layers=0), "--encoder-layers and --decoder-layers must be"),
    (dict(decoder_hidden_size=6),
     "--encoder-hidden-size \\(5\\) must equal --decoder-hidden-size \\(6\\)"),
    (dict(share_decoder_input_output_embed=True),
     "--share-decoder-input-output-embed needs --decoder-out-embed-dim \\(4\\)"),
    (dict(dropout=1.0), "--dropout must be in \\[0, 1\\), got 1.0"),
    (dict(dropout=-0.1), "--dropout must be in \\[0, 1\\)"),
    (dict(encoder_dropout_in=1.5), "--encoder-dropout-in must be in \\[0, 1\\)"),
    (dict(encoder_dropout_out=2.0), "--encoder-dropout-out must be in \\[0, 1\\)"),
    (dict(decoder_dropout_in=1.0), "--decoder-dropout-in must be in \\[0, 1\\)"),
    (dict(decoder_dropout_out=-0.2), "--decoder-dropout-out must be in \\[0, 1\\)"),
])
def test_config_errors_name_flag(build_model, settings, message):
    with pytest.raises(ValueError, match=message):
        build_model(**settings)


def test_check_config_accepts_defaults():
    check_config(HaloLSTMConfig())


def test_small_architecture_fills_missing():
    args = Namespace(encoder_hidden_size=16, dropout=0.1)
    halo_lstm_small(args)

    assert args.encoder_hidden_size == 16
    assert args.encoder_embed_dim == 128
    assert args.decoder_out_embed_dim == 128
    assert args.encoder_bidirectional is True
    assert args.dropout == 0.1
