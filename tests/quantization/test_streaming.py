"""Quantizing a decoder block by block from safetensors gives exactly the in-memory result."""

import copy

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

import edgeopt as eo
from edgeopt.errors import ConfigError, DataError
from edgeopt.quantization import stream_onnx
from edgeopt.quantization.modules import GroupedLinear, QuantizedWeightLayer
from edgeopt.quantization.streaming import quantize_checkpoint, quantize_decoder

transformers = pytest.importorskip("transformers")

INT4 = eo.QuantSpec(bits=4, granularity="per_group", group_size=32)
INT8 = eo.QuantSpec(bits=8, granularity="per_channel")


def weight_only(weights: eo.QuantSpec, **options) -> eo.QuantConfig:
    return eo.QuantConfig(method="weight_only", activations=None, weights=weights, **options)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random 2-block Llama saved in 2 safetensors shards, and its calibration ids."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder, max_shard_size="100KB")
    assert len(list(folder.glob("*.safetensors"))) >= 2
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    return folder, model, ids


def streamed_state(result) -> dict[str, torch.Tensor]:
    """The saved pieces under the model's own names."""
    names = {"head": "model.", "tail": ""}
    renames = {"head.embed.": "model.embed_tokens.", "tail.norm.": "model.norm.",
               "tail.head.": "lm_head."}
    state = {}
    for path in result.tensors:
        piece = path.stem
        for key, value in load_file(path).items():
            if piece in names:
                key = next(new + key[len(old) - len(piece) - 1:] for old, new in renames.items()
                           if f"{piece}.{key}".startswith(old))
            else:
                key = f"{piece}.{key.removeprefix('block.')}"
            state[key] = value
    return state


@pytest.mark.parametrize("config", [
    weight_only(INT8),
    weight_only(INT4),
    weight_only(INT4, rounding="gptq"),
    weight_only(INT4, awq=True),
    weight_only(INT8, awq=True, rounding="gptq"),
], ids=["rtn-int8", "rtn-int4", "gptq-int4", "awq-int4", "awq-gptq-int8"])
def test_streamed_equals_in_memory(checkpoint, tmp_path, config):
    folder, model, ids = checkpoint
    calibration = ids if config.awq or config.rounding.value == "gptq" else None
    result = quantize_checkpoint(folder, tmp_path, config, calibration=calibration,
                                 export=False, save_tensors=True)
    reference = quantize_decoder(copy.deepcopy(model), config, calibration).state_dict()
    streamed = streamed_state(result)
    assert result.blocks == 2 and streamed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(streamed[key], value), key
    quantized = [n for n in result.layers if "proj" in n or n == "lm_head"]
    assert len(quantized) == 2 * 7 + 1


def test_round_to_nearest_is_eo_apply_weight_only(checkpoint):
    _, model, _ = checkpoint
    config = weight_only(INT4)
    ours = quantize_decoder(copy.deepcopy(model), config)
    theirs = eo.apply(copy.deepcopy(model), config)
    layers = {n: m for n, m in theirs.named_modules() if isinstance(m, GroupedLinear)}
    assert len(layers) == 15
    for name, layer in layers.items():
        mine = ours.get_submodule(name)
        assert torch.equal(mine.weight_q, layer.weight_q), name
        assert torch.equal(mine.weight_scale, layer.weight_scale), name


def test_gptq_and_awq_lower_the_output_error(checkpoint):
    _, model, ids = checkpoint
    with torch.no_grad():
        want = model(ids).logits

        def error(config):
            q = quantize_decoder(copy.deepcopy(model), config, ids)
            return float((q(ids).logits - want).pow(2).mean())

        nearest = error(weight_only(INT4))
        assert error(weight_only(INT4, rounding="gptq")) < nearest
        assert error(weight_only(INT4, awq=True)) <= nearest


def test_onnx_with_external_data_runs_like_the_quantized_model(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    folder, model, ids = checkpoint
    config = weight_only(INT4, rounding="gptq")
    result = quantize_checkpoint(folder, tmp_path, config, calibration=ids)
    graph = onnx.load(str(result.onnx), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= 2 * 7 + 2  # every weight of the blocks, the embedding, lm_head
    assert all(len(t.raw_data) < 1024 for t in graph.initializer if t not in external)
    assert "MatMulNBits" in {n.op_type for n in graph.node}
    session = ort.InferenceSession(str(result.onnx))
    reference = quantize_decoder(copy.deepcopy(model), config, ids)
    for batch in (ids[:1], ids[:3, :9]):  # dynamic batch and sequence
        got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
        with torch.no_grad():
            want = reference(batch).logits.numpy()
        # MatMulNBits rounds its inputs to int8 (accuracy_level 4): a small, bounded gap
        assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_refusals_before_any_weight_is_read(checkpoint, tmp_path):
    folder, _, _ = checkpoint
    with pytest.raises(ValueError, match="method"):
        quantize_checkpoint(folder, tmp_path, eo.QuantConfig())
    with pytest.raises(DataError, match="calibration"):
        quantize_checkpoint(folder, tmp_path, weight_only(INT4, rounding="gptq"))
    with pytest.raises(ConfigError, match="group_size"):
        quantize_checkpoint(folder, tmp_path, weight_only(
            eo.QuantSpec(bits=4, granularity="per_group", group_size=48)), export=False)
    assert not list(tmp_path.iterdir())


def test_int8_layers_are_the_in_memory_modules(checkpoint):
    _, model, _ = checkpoint
    q = quantize_decoder(copy.deepcopy(model), weight_only(INT8))
    assert isinstance(q.model.layers[1].mlp.down_proj, QuantizedWeightLayer)


def _piece(block: torch.nn.Module, template: bool = False):
    from edgeopt.quantization.streaming import _Block

    hidden, cos, sin = torch.randn(1, 8, 64), torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    return stream_onnx.export_piece(_Block(block), (hidden, cos, sin), 21, template=template)


def _inline(tensor, raw) -> None:
    tensor.raw_data = bytes(raw)  # what the writer would append to the data file


@pytest.mark.parametrize("config", [weight_only(INT8), weight_only(INT4, awq=True)],
                         ids=["rtn-int8", "awq-int4"])
def test_a_block_built_from_the_first_blocks_graph_is_its_export(checkpoint, config):
    """Block 1 built from block 0's exported graph is byte for byte block 1's own export (int8:
    block 0's equal zero points are merged by the exporter; AWQ int4: packed MatMulNBits)."""
    from edgeopt.quantization.streaming import _Block

    _, model, ids = checkpoint
    q = quantize_decoder(copy.deepcopy(model), config, ids if config.awq else None)
    _, template = _piece(q.model.layers[0], template=True)
    fresh, _ = _piece(q.model.layers[1])
    built = template.instantiate(_Block(q.model.layers[1]), _inline)
    assert built is not None
    assert built.SerializeToString() == fresh.SerializeToString()


def test_a_block_that_does_not_fit_the_graph_is_exported(checkpoint, tmp_path, monkeypatch):
    """Block 0's two equal norm gains are one initializer in its graph: a block whose gains
    differ cannot reuse it (quantize_checkpoint then exports that block itself)."""
    from edgeopt.quantization.streaming import _Block

    _, model, _ = checkpoint
    q = quantize_decoder(copy.deepcopy(model), weight_only(INT4))
    block0, block1 = q.model.layers
    calls, real = [], stream_onnx.export_piece
    monkeypatch.setattr(stream_onnx, "export_piece",
                        lambda module, *a, **k: calls.append(module) or real(module, *a, **k))
    writer = stream_onnx.StitchedWriter(tmp_path / "model.onnx", 21)
    hidden, cos, sin = torch.randn(1, 8, 64), torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    writer.add("b0", _Block(block0), (hidden, cos, sin), shared="block")
    assert writer.templates["block"].instantiate(_Block(block1), _inline) is not None
    with torch.no_grad():
        block1.post_attention_layernorm.weight.mul_(1.5)
    assert writer.templates["block"].instantiate(_Block(block1), _inline) is None
    writer.add("b1", _Block(block1), (hidden, cos, sin), shared="block")
    assert len(calls) == 2 and writer.reused == 0


@pytest.mark.parametrize("keep_reference", [False, True])
def test_slices_of_output_features_build_the_whole_layer(keep_reference):
    """A wide layer quantized a few output features at a time (lm_head) equals one piece."""
    from edgeopt.quantization.streaming import build_in_chunks
    from edgeopt.quantization.weights import LayerBuilder

    torch.manual_seed(2)
    layer = torch.nn.Linear(64, 70)
    builder = LayerBuilder(weight_only(INT4))
    whole = builder.build(layer, INT4)
    sliced = build_in_chunks(builder, layer, INT4, keep_reference=keep_reference, chunk=16)
    assert whole.state_dict().keys() == sliced.state_dict().keys()
    for key, value in whole.state_dict().items():
        assert torch.equal(sliced.state_dict()[key], value), key
    assert ("reference_weight" in vars(sliced)) == keep_reference
    if keep_reference:
        assert torch.equal(sliced.reference_weight, whole.reference_weight)


def test_lm_head_exported_narrow_and_widened_is_its_export(checkpoint):
    """The tail exported with lm_head cut to 16 features, then given lm_head's packed tensors
    and width, is byte for byte the tail's own export."""
    from edgeopt.quantization.streaming import _Tail

    _, model, _ = checkpoint
    q = quantize_decoder(copy.deepcopy(model), weight_only(INT4))
    tail = _Tail(q.model.norm, q.lm_head)
    args = (torch.randn(1, 8, 64),)
    built = stream_onnx.export_narrow(tail, "head", args, 21, _inline)
    fresh, _ = stream_onnx.export_piece(tail, args, 21)
    assert built is not None and built.SerializeToString() == fresh.SerializeToString()
