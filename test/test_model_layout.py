"""The full-size module tree built from the released config (on the meta device, no memory) has
exactly the tensors of the released MiniCPM-o 4.5 module tree.

The expected key names and shapes are derived by parsing the printed PyTorch module tree of the
released model (test/data/minicpm-o-4.5-module-tree.txt, a copy of the reference facts), not from
a hand-written list. The printed tree does not show bare nn.Parameters; the two the released
Resampler holds (`query` [query_num, hidden], `proj` [hidden, hidden]) are added from the
reference facts.
"""
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from omni_ros.model.config import OmniConfig
from omni_ros.model.loader import expected_keys

pytestmark = pytest.mark.unit

TREE = Path(__file__).parent / "data" / "minicpm-o-4.5-module-tree.txt"

_LINE = re.compile(r"^(?P<indent>\s*)\((?P<name>[^)]+)\): (?P<body>.*)$")


def _ints(text: str) -> List[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _kw(body: str, key: str):
    m = re.search(key + r"=([^,)]+)", body)
    return m.group(1) if m else None


def _leaf_tensors(body: str) -> Dict[str, Tuple[int, ...]]:
    """Stored tensors of one printed leaf module (relative names)."""
    kind = body.split("(", 1)[0]
    args = body[len(kind) + 1:]
    if kind == "Embedding":
        n, d = _ints(args)[:2]
        return {"weight": (n, d)}
    if kind in ("Linear", "NonDynamicallyQuantizableLinear"):
        i, o = int(_kw(args, "in_features")), int(_kw(args, "out_features"))
        out = {"weight": (o, i)}
        if _kw(args, "bias") == "True":
            out["bias"] = (o,)
        return out
    if kind in ("Conv1d", "Conv2d"):
        c_in, c_out = _ints(args)[:2]
        kernel = tuple(_ints(re.search(r"kernel_size=\(([^)]*)\)", args).group(1)))
        out = {"weight": (c_out, c_in) + kernel}
        if _kw(args, "bias") != "False":
            out["bias"] = (c_out,)
        return out
    if kind == "LayerNorm":
        d = _ints(args)[0]
        return {"weight": (d,), "bias": (d,)} if "elementwise_affine=True" in args else {}
    if kind.endswith("RMSNorm"):
        return {"weight": (_ints(args)[0],)}
    return {}   # activations, pooling, rotary embeddings, dropout: nothing stored


def parse_module_tree(text: str) -> Dict[str, Tuple[int, ...]]:
    """State-dict key -> shape for a printed `MiniCPMO(...)` module tree."""
    lines = text.splitlines()
    assert lines[0].startswith("MiniCPMO(")
    keys: Dict[str, Tuple[int, ...]] = {}
    # stack of (indent, [prefixes]) for open containers; a "(0-35): 36 x Layer(" opens several
    stack: List[Tuple[int, List[str]]] = [(-1, [""])]
    pending_linear: Dict[str, Tuple[int, int, bool]] = {}
    for idx, line in enumerate(lines[1:], start=1):
        if line.strip() == ")" and len(line) - len(line.lstrip()) == 0:
            break                                            # end of the top-level tree
        m = _LINE.match(line)
        if not m:
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name, body = m.group("name"), m.group("body")
        if re.fullmatch(r"\d+-\d+", name):
            lo, hi = map(int, name.split("-"))
            names = [str(i) for i in range(lo, hi + 1)]
        else:
            names = [name]
        prefixes = [p + n + "." for p in stack[-1][1] for n in names]
        kind = re.sub(r"^\d+ x ", "", body).split("(", 1)[0]
        if kind == "ParametrizedLinear":            # features printed on the next line
            body = body + " " + lines[idx + 1].strip()
            i, o = int(_kw(body, "in_features")), int(_kw(body, "out_features"))
            for p in prefixes:
                keys[p + "parametrizations.weight.original0"] = (o, 1)   # g
                keys[p + "parametrizations.weight.original1"] = (o, i)   # v
                if _kw(body, "bias") == "True":
                    keys[p + "bias"] = (o,)
            stack.append((indent, []))                       # its children hold nothing else
            continue
        if kind == "MultiheadAttention":
            for p in prefixes:
                pending_linear[p] = (0, 0, True)
        leaf = _leaf_tensors(re.sub(r"^\d+ x ", "", body))
        for p in prefixes:
            for rel, shape in leaf.items():
                keys[p + rel] = shape
        if body.rstrip().endswith("("):
            stack.append((indent, prefixes))
    # nn.MultiheadAttention stores packed in_proj weight/bias beside out_proj
    for p in pending_linear:
        e = keys[p + "out_proj.weight"][1]
        keys[p + "in_proj_weight"] = (3 * e, e)
        keys[p + "in_proj_bias"] = (3 * e,)
    return {k.rstrip("."): v for k, v in keys.items()}


def _released_from_tree() -> Dict[str, Tuple[int, ...]]:
    keys = parse_module_tree(TREE.read_text(encoding="utf-8"))
    hidden = keys["llm.model.norm.weight"][0]
    keys["resampler.query"] = (64, hidden)        # 64 learned queries (reference facts)
    keys["resampler.proj"] = (hidden, hidden)     # bare projection parameter
    return keys


def test_parser_reads_the_tree():
    keys = _released_from_tree()
    assert keys["llm.model.layers.35.self_attn.k_proj.weight"] == (1024, 4096)
    assert keys["vpm.embeddings.patch_embedding.weight"] == (1152, 3, 14, 14)
    assert keys["tts.head_code.0.parametrizations.weight.original0"] == (6562, 1)
    assert keys["resampler.attn.in_proj_weight"] == (12288, 4096)
    assert "apm.layers.0.self_attn.k_proj.bias" not in keys
    assert not any(k.startswith("audio_avg_pooler") or "rotary" in k for k in keys)
    assert len({k.split(".")[3] for k in keys if k.startswith("vpm.encoder.layers.")}) == 26


def test_full_size_skeleton_equals_released_module_tree():
    expected = _released_from_tree()
    built = expected_keys(OmniConfig.released())          # meta device: costs no memory
    missing = sorted(set(expected) - set(built))
    unexpected = sorted(set(built) - set(expected))
    assert not missing, f"keys of the released tree the skeleton lacks: {missing[:10]}"
    assert not unexpected, f"keys the released tree lacks: {unexpected[:10]}"
    wrong = {k: (built[k], expected[k]) for k in expected if built[k] != expected[k]}
    assert not wrong, f"mis-shaped: {dict(list(wrong.items())[:10])}"
    assert len(built) == len(expected)


def test_config_field_names_follow_the_released_classes(tiny_checkpoint):
    """config.json of a tiny checkpoint carries the released configuration classes' field names
    with the same nesting (names: test/data/minicpmo-config-fields.json)."""
    import json

    fields = json.loads((TREE.parent / "minicpmo-config-fields.json").read_text(encoding="utf-8"))
    cfg = json.loads((tiny_checkpoint / "config.json").read_text(encoding="utf-8"))
    assert cfg["model_type"] == "minicpmo"
    assert set(fields["minicpmo"]) <= set(cfg), set(fields["minicpmo"]) - set(cfg)
    assert set(fields["qwen3"]) <= set(cfg), set(fields["qwen3"]) - set(cfg)
    assert set(fields["slice_config"]) <= set(cfg["slice_config"])
    tts = set(cfg["tts_config"]) - {"model_type"}
    assert tts == set(fields["tts_config"]), (tts ^ set(fields["tts_config"]))
    # the released code sizes the audio projector input as encoder_ffn_dim // 4
    assert cfg["audio_config"]["encoder_ffn_dim"] // 4 == cfg["audio_config"]["d_model"]
    assert cfg["hidden_size"] % 128 == 0          # resampler heads = hidden_size // 128
