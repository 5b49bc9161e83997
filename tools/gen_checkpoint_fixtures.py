"""Writes the library-written checkpoint fixtures under tests/fixtures/checkpoints/ (run by hand; outputs committed).

    /work/pyenv/bin/python tools/gen_checkpoint_fixtures.py

Unlike tools/gen_encoder_fixtures.py (which writes most checkpoints by hand in the official layout),
every checkpoint here is written BY THE LIBRARY THAT OWNS THE FORMAT, and every reference is that
library's own forward on the same weights. So the fixtures prove that the Rust reader accepts what the
libraries really write today (names, config.json, ONNX graphs) and reproduces their numbers, including
the position-embedding resize each library uses (`expect_pos_resize`):

  official  scale_factor = (grid + 0.1) / old grid, bicubic, no antialias (Meta's DINO / DINOv2)
  size      size-based bicubic, no antialias (transformers Dinov2Model)
  size-aa   size-based bicubic, antialias (transformers Dinov2WithRegistersModel, timm)

Cases (tiny random models: embed 64, depth 2, 4 heads, patch 14; every image grid differs from the
position grid so the resize is exercised):

  hf_dinov2_reg       transformers Dinov2WithRegistersModel (4 registers), save_pretrained folder;
                      proves registers and the antialiased size resize of transformers' registers model.
  hf_dinov2_folder    transformers Dinov2Model, save_pretrained folder (checkpoint = the folder);
                      proves the folder form and transformers' plain size resize.
  timm_dinov2_hf      timm vit_small_patch14_dinov2 written by timm's save_for_hf (model.safetensors +
                      timm's config.json); proves timm's hub folder and timm's antialiased resize.
  timm_dinov2_bare    the same timm model's state_dict as a plain .pth: its names are Meta's (less
                      mask_token), so the reader cannot tell it from an official file; the case passes
                      pos_resize "size-aa" (what a user would pass) and matches timm.
  hf_dinov2_dynamo    ONNX of the transformers Dinov2Model written by torch.onnx.export(dynamo=True)
                      (torch's default exporter); reference = onnxruntime on the file (no_grad).
  meta_dinov2_legacy  ONNX of Meta's DINOv2 (restated in reference_vit.py), TorchScript exporter, opset 17.
  meta_dinov2_dynamo  the same model, dynamo exporter. Both keep Meta's scale_factor resize (no_grad).

Each `<case>.expected.safetensors` holds `images` (pixels in [0,1], before ImageNet normalisation),
`cls`, `patch` and, except for ONNX, `proj_cls`, `proj_patch`, `grad` (see gen_encoder_fixtures.run_reference).
The script also prints, for every ONNX file, the facts a reader needs (initializer names, node metadata,
Resize inputs/attributes, position-embedding pieces) and each library's distance from the official
resize on the same weights (nonzero: the resize semantics matter).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402
from gen_encoder_fixtures import images_for, run_reference  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "checkpoints")
DIM, DEPTH, HEADS, PATCH = 64, 2, 4, 14


def save_expected(name, tensors):
    for k, v in tensors.items():
        assert torch.isfinite(v).all(), f"{name}: {k} is not finite"
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"{name}.expected.safetensors"))


def randomize(model, seed):
    """reference_vit.randomize, plus position embeddings of the official-code scale (0.2 randn) whatever
    the library calls them, so that resizing them moves the outputs visibly."""
    ref.randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name or "pos_embed" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def hf_to_official(state, depth):
    """transformers' saved Dinov2 names -> Meta's names (q, k, v fused), to run the weights in reference_vit."""
    out = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
        "mask_token": state["embeddings.mask_token"].reshape(1, -1),
    }
    if "embeddings.register_tokens" in state:
        out["register_tokens"] = state["embeddings.register_tokens"]
    for i in range(depth):
        s, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[s + f"attn.qkv.{kind}"] = torch.cat([state[h + f"attention.attention.{p}.{kind}"]
                                                      for p in ("query", "key", "value")])
            out[s + f"attn.proj.{kind}"] = state[h + f"attention.output.dense.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[s + f"{n}.{kind}"] = state[h + f"{n}.{kind}"]
        out[s + "ls1.gamma"] = state[h + "layer_scale1.lambda1"]
        out[s + "ls2.gamma"] = state[h + "layer_scale2.lambda1"]
    return out


def official_model(state, pos_grid, registers=0, offset=0.1, antialias=False):
    m = ref.VisionTransformer(PATCH, DIM, DEPTH, HEADS, pos_grid=pos_grid, num_register_tokens=registers,
                              interpolate_offset=offset, interpolate_antialias=antialias).eval()
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"mask_token"}, (missing, unexpected)
    return m


def compare(label, forward, state, pos_grid, images, registers=0):
    """Max-abs distance of a library's (cls, patch) from reference_vit on the same weights, with Meta's
    official resize and with each size-based one."""
    with torch.no_grad():
        cls, patch = forward(images)
        for sem, offset, aa in (("official", 0.1, False), ("size", 0.0, False), ("size-aa", 0.0, True)):
            m = official_model(state, pos_grid, registers, offset, aa)
            c, p = m(ref.normalize(images))
            d = max((c - cls).abs().max().item(), (p - patch).abs().max().item())
            print(f"  {label} vs reference_vit[{sem}]: max abs diff {d:.3e}")


def split(tokens, registers=0):
    return tokens[:, 0], tokens[:, 1 + registers:]


# ----------------------------------------------------------------------------------------------- ONNX


def onnx_facts(path, dim=DIM):
    """Prints what a reader of the file needs to know (summarised in tests/fixtures/checkpoints/README.md)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    g = model.graph
    lines = []

    def say(s=""):
        print(s)
        lines.append(s)

    inits = {i.name: i for i in g.initializer}
    external = [i.name for i in g.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    producers = {o: n for n in g.node for o in n.output}
    say(f"== {os.path.basename(path)}  ({os.path.getsize(path)} bytes)")
    say(f"opset: {[(o.domain or 'ai.onnx', o.version) for o in model.opset_import]}; ir_version {model.ir_version}; "
        f"producer {model.producer_name} {model.producer_version}")
    say(f"inputs: {[(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]) for i in g.input]}")
    say(f"outputs: {[(o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]) for o in g.output]}")
    say(f"external data: {external or 'none'}; model metadata_props: {[(p.key, p.value) for p in model.metadata_props]}")
    for p in g.metadata_props:
        first = [ln for ln in p.value.splitlines() if ln.strip()][:4]
        say(f"graph metadata_props {p.key!r}: {len(p.value.splitlines())} lines, first: {first}")
    say(f"initializers: {len(inits)}; Constant nodes: {sum(n.op_type == 'Constant' for n in g.node)}")
    for name, t in list(inits.items())[:32]:
        say(f"  init {name!r} {list(t.dims)}")
    from collections import Counter
    say(f"op types: {dict(Counter(n.op_type for n in g.node))}")

    def meta(n):  # the stack trace is long and names files of this machine: left out
        return {p.key: p.value for p in n.metadata_props if p.key != "pkg.torch.onnx.stack_trace"}

    def const_value(name):
        if name == "":
            return "(absent)"
        def show(a):
            return a.tolist() if a.size <= 16 else f"shape {list(a.shape)}"

        if name in inits:
            return f"initializer {name!r} = {show(numpy_helper.to_array(inits[name]))}"
        p = producers.get(name)
        if p is not None and p.op_type == "Constant":
            return f"Constant {name!r} = {show(numpy_helper.to_array(p.attribute[0].t))}"
        if p is None:
            return f"graph input {name!r}"
        return f"computed {name!r} by {p.op_type} {p.name!r} (inputs {list(p.input)})"

    keys = Counter(k for n in g.node for k in meta(n))
    say(f"node metadata_props keys (count): {dict(keys)}")
    # MatMul / Gemm consuming a weight of block 0 (directly or through a Transpose of an initializer).
    say("MatMul/Gemm with a weight input (first 6: block 0 of attention + mlp):")
    shown = 0
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm") or shown >= 6:
            continue
        w = [i for i in n.input if i in inits or (i in producers and producers[i].op_type == "Transpose"
                                                  and producers[i].input[0] in inits)]
        if not w:
            continue
        shown += 1
        desc = []
        for i in w:
            if i in inits:
                desc.append(f"{i!r} {list(inits[i].dims)}")
            else:
                src = producers[i].input[0]
                desc.append(f"Transpose({src!r} {list(inits[src].dims)})")
        say(f"  {n.op_type} name={n.name!r} weight={desc}")
        for k, v in meta(n).items():
            say(f"    {k} = {v}")
    # Position embedding: initializers whose shape fits one (or a piece of one).
    pos = [(k, list(t.dims)) for k, t in inits.items()
           if len(t.dims) >= 2 and t.dims[-1] == dim and ("pos" in k.lower() or t.dims[0] == 1 and len(t.dims) == 3)]
    pos += [(k, list(t.dims)) for k, t in inits.items() if len(t.dims) == 4 and t.dims[:2] == [1, dim]]
    say(f"position-embedding / token candidates (initializers [1,*,{dim}] or [1,{dim},h,w]): {pos}")
    for k, _ in pos:
        users = [n for n in g.node if k in n.input]
        for u in users[:3]:
            say(f"  {k!r} used by {u.op_type} {u.name!r} inputs={list(u.input)}")
            for mk, mv in meta(u).items():
                say(f"    {mk} = {mv}")
    for n in g.node:
        if n.op_type != "Resize":
            continue
        say(f"Resize {n.name!r}: inputs {list(n.input)}")
        for role, i in zip(("X", "roi", "scales", "sizes"), list(n.input) + [""] * (4 - len(n.input))):
            say(f"  {role}: {const_value(i)}")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        say(f"  attributes: { {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()} }")
        for k, v in meta(n).items():
            say(f"  {k} = {v}")
        # the chain feeding X back to an initializer
        chain, cur = [], n.input[0]
        while cur in producers and len(chain) < 8:
            p = producers[cur]
            chain.append(f"{p.op_type}({', '.join(p.input)})")
            cur = p.input[0] if p.input else ""
        say(f"  X comes from: {' <- '.join(chain) or cur} <- {cur!r}"
            f"{' ' + str(list(inits[cur].dims)) if cur in inits else ''}")
    return lines


def resized_pos(pos, grid, sem):
    """pos [1, 1 + M*M, D] (class position first) resized to grid (h, w) with one of the three semantics."""
    m = int(round((pos.shape[1] - 1) ** 0.5))
    x = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if sem == "official":
        x = torch.nn.functional.interpolate(x, scale_factor=((grid[0] + 0.1) / m, (grid[1] + 0.1) / m), mode="bicubic")
    else:
        x = torch.nn.functional.interpolate(x, size=grid, mode="bicubic", antialias=sem == "size-aa")
    return torch.cat([pos[:, :1], x.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)


def identify(path, state, pos_name, grid):
    """Says what each initializer not named after a parameter holds: a parameter, its transpose, or a piece
    (class position, patch grid as NCHW, the whole embedding resized to `grid` with some semantics)."""
    import onnx
    from onnx import numpy_helper

    lines = []
    pos = state[pos_name]
    m = int(round((pos.shape[1] - 1) ** 0.5))
    cands = []
    for k, v in state.items():
        cands.append((k, v))
        if v.dim() == 2:
            cands.append((f"{k}.T", v.t()))
    cands += [(f"{pos_name}[:, :1] (class position)", pos[:, :1]),
              (f"{pos_name}[:, 1:] as [1, D, {m}, {m}] (patch grid, NCHW)",
               pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2))]
    for sem in ("official", "size", "size-aa"):
        cands.append((f"{pos_name} resized to grid {grid[0]}x{grid[1]} with '{sem}' semantics (class position first)",
                      resized_pos(pos, grid, sem)))
    for t in onnx.load(path).graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT or t.name in state or len(t.dims) == 0:
            continue
        a = torch.from_numpy(numpy_helper.to_array(t).copy())
        hits = [n for n, c in cands if c.numel() == a.numel() and tuple(c.shape) == tuple(a.shape)
                and torch.allclose(c.contiguous().float(), a, atol=1e-6, rtol=0)]
        lines.append(f"  {t.name!r} {list(t.dims)} = {hits[0] if hits else '(not a parameter: graph constant)'}"
                     + (f"  [also: {hits[1:]}]" if len(hits) > 1 else ""))
    for line in lines:
        print(line)
    return lines


def ort_run(path, pixels):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: ref.normalize(pixels).numpy().astype(np.float32)})[0])


def export(module, pixels, path, dynamo):
    """Writes `module` (normalised pixels -> tokens) as one self-contained ONNX file."""
    args = (ref.normalize(pixels),)
    if dynamo:
        torch.onnx.export(module, args, path, input_names=["input_image"], output_names=["tokens"],
                          dynamo=True, external_data=False)
    else:
        torch.onnx.export(module, args, path, input_names=["input_image"], output_names=["tokens"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    assert not os.path.exists(path + ".data"), "weights must be inside the file"


class HfTokens(torch.nn.Module):
    """transformers model -> last_hidden_state, as in gen_encoder_fixtures' hf_dinov2.onnx."""

    def __init__(self, inner):
        super().__init__()
        self.backbone = inner

    def forward(self, pixel_values):
        return self.backbone(pixel_values=pixel_values).last_hidden_state


class MetaTokens(torch.nn.Module):
    """Meta's DINOv2 -> final-norm tokens (cls + patch), i.e. forward_features' x_norm before splitting."""

    def __init__(self, inner):
        super().__init__()
        self.backbone = inner

    def forward(self, x):
        b = self.backbone
        x = b.prepare_tokens(x)
        for blk in b.blocks:
            x = blk(x)
        return b.norm(x)


def onnx_case(cases, name, module, pixels, dynamo, torch_forward, expect_pos_resize):
    path = os.path.join(OUT, f"{name}.onnx")
    export(module, pixels, path, dynamo)
    tokens = ort_run(path, pixels)
    cls, patch = split(tokens)
    save_expected(name, {"images": pixels, "cls": cls, "patch": patch})
    with torch.no_grad():
        tc, tp = torch_forward(pixels)
    d = max((tc - cls).abs().max().item(), (tp - patch).abs().max().item())
    print(f"  {name}: onnxruntime vs the torch forward it was exported from: max abs diff {d:.3e}")
    assert d < 1e-3, f"{name}: the export does not reproduce the model"
    onnx_facts(path)
    print("what the initializers not named after a parameter hold:")
    grid = (pixels.shape[2] // PATCH, pixels.shape[3] // PATCH)
    pos_name = next(k for k in module.state_dict() if k.endswith("pos_embed") or k.endswith("position_embeddings"))
    identify(path, module.state_dict(), pos_name, grid)
    cases.append(dict(name=name, checkpoint=f"{name}.onnx", heads=None, pos_resize=None, expect_source="onnx",
                      expect_arch="custom", expect_pos_resize=expect_pos_resize, no_grad=True))


# ----------------------------------------------------------------------------------------------- main


def main():
    import timm
    import transformers
    from timm.models import save_for_hf
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, timm {timm.__version__}")
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    cases = []

    # 1. transformers Dinov2WithRegistersModel, 4 registers, position grid 3x3 -> image grid 4x3 (batch 2).
    cfg = Dinov2WithRegistersConfig(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                    patch_size=PATCH, image_size=3 * PATCH, num_register_tokens=4, mlp_ratio=4,
                                    layer_norm_eps=1e-6)
    hf = randomize(Dinov2WithRegistersModel(cfg), 21).eval()
    folder = fresh_dir(os.path.join(OUT, "hf_dinov2_reg"))
    hf.save_pretrained(folder, safe_serialization=True)
    hf = Dinov2WithRegistersModel.from_pretrained(folder).eval()  # what a user of the folder runs
    fwd = lambda x: split(hf(pixel_values=ref.normalize(x)).last_hidden_state, 4)  # noqa: E731
    imgs = images_for(21, 2, 56, 42)
    save_expected("hf_dinov2_reg", run_reference(fwd, imgs, 21))
    cases.append(dict(name="hf_dinov2_reg", checkpoint="hf_dinov2_reg", heads=HEADS, pos_resize=None,
                      expect_source="huggingface", expect_arch="custom", expect_pos_resize="size-aa"))
    compare("hf_dinov2_reg (transformers)", fwd, hf_to_official(load_file(os.path.join(folder, "model.safetensors")),
                                                                DEPTH), 3, imgs, registers=4)

    # 2. transformers Dinov2Model, position grid 4x4 -> image grid 3x5.
    cfg = Dinov2Config(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS, patch_size=PATCH,
                       image_size=4 * PATCH, mlp_ratio=4, layer_norm_eps=1e-6)
    hf2 = randomize(Dinov2Model(cfg), 22).eval()
    folder = fresh_dir(os.path.join(OUT, "hf_dinov2_folder"))
    hf2.save_pretrained(folder, safe_serialization=True)
    hf2 = Dinov2Model.from_pretrained(folder).eval()
    fwd2 = lambda x: split(hf2(pixel_values=ref.normalize(x)).last_hidden_state)  # noqa: E731
    imgs = images_for(22, 1, 42, 70)
    save_expected("hf_dinov2_folder", run_reference(fwd2, imgs, 22))
    cases.append(dict(name="hf_dinov2_folder", checkpoint="hf_dinov2_folder", heads=HEADS, pos_resize=None,
                      expect_source="huggingface", expect_arch="custom", expect_pos_resize="size"))
    hf2_state = hf_to_official(load_file(os.path.join(folder, "model.safetensors")), DEPTH)
    compare("hf_dinov2_folder (transformers)", fwd2, hf2_state, 4, imgs)

    # 3. timm vit_small_patch14_dinov2 (shrunk), written by timm's save_for_hf; position grid 4x4 -> 5x3.
    tm = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=DIM, depth=DEPTH,
                           num_heads=HEADS, img_size=4 * PATCH, dynamic_img_size=True, num_classes=0)
    tm = randomize(tm, 23).eval()
    folder = fresh_dir(os.path.join(OUT, "timm_dinov2_hf"))
    save_for_hf(tm, folder, safe_serialization=True)
    tfwd = lambda x: split(tm.forward_features(ref.normalize(x)))  # noqa: E731
    imgs = images_for(23, 1, 70, 42)
    save_expected("timm_dinov2_hf", run_reference(tfwd, imgs, 23))
    cases.append(dict(name="timm_dinov2_hf", checkpoint="timm_dinov2_hf", heads=HEADS, pos_resize=None,
                      expect_source="timm", expect_arch="custom", expect_pos_resize="size-aa"))
    compare("timm_dinov2_hf (timm)", tfwd, tm.state_dict(), 4, imgs)

    # 4. The same timm model's state_dict as a bare .pth: Meta's names, so the default (official) resize is
    #    not timm's; the case passes the flag a user would pass.
    torch.save(tm.state_dict(), os.path.join(OUT, "timm_dinov2_bare.pth"))
    imgs = images_for(24, 1, 42, 70)
    save_expected("timm_dinov2_bare", run_reference(tfwd, imgs, 24))
    cases.append(dict(name="timm_dinov2_bare", checkpoint="timm_dinov2_bare.pth", heads=HEADS, pos_resize="size-aa",
                      expect_source="official", expect_arch="custom", expect_pos_resize="size-aa"))
    meta_names = set(ref.VisionTransformer(PATCH, DIM, DEPTH, HEADS, pos_grid=4).state_dict())
    timm_names = set(tm.state_dict())
    print(f"  timm state_dict names vs Meta's: only timm {sorted(timm_names - meta_names)}, "
          f"only Meta {sorted(meta_names - timm_names)}; pos_embed {list(tm.pos_embed.shape)} (class position "
          f"included: {tm.pos_embed.shape[1] == 17})")
    compare("timm_dinov2_bare (timm)", tfwd, tm.state_dict(), 4, imgs)

    # 5. ONNX of the transformers Dinov2Model (case 2's weights) by the dynamo exporter; grid 4x4 -> 3x5.
    imgs = images_for(25, 1, 42, 70)
    onnx_case(cases, "hf_dinov2_dynamo", HfTokens(hf2).eval(), imgs, True, fwd2, "size")

    # 6. ONNX of Meta's DINOv2 (reference_vit restates it), both exporters; grid 4x4 -> 4x3.
    meta = randomize(ref.VisionTransformer(PATCH, DIM, DEPTH, HEADS, pos_grid=4), 26).eval()
    mfwd = lambda x: meta(ref.normalize(x))  # noqa: E731
    imgs = images_for(26, 1, 56, 42)
    onnx_case(cases, "meta_dinov2_legacy", MetaTokens(meta).eval(), imgs, False, mfwd, "official")
    onnx_case(cases, "meta_dinov2_dynamo", MetaTokens(meta).eval(), imgs, True, mfwd, "official")
    compare("meta_dinov2 (reference_vit, official)", mfwd, meta.state_dict(), 4, imgs)

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)} ({total} bytes)")


if __name__ == "__main__":
    main()
