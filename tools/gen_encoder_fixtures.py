"""Writes the encoder parity fixtures under tests/fixtures/encoder/ (run by hand; outputs committed).

    python3 -m pip install torch timm transformers onnx onnxruntime safetensors
    python3 tools/gen_encoder_fixtures.py

For each case: a checkpoint in one of the supported formats/namings (random weights, tiny model) and
`<case>.expected.safetensors` holding `images` (pixels in [0,1]), the reference `cls` / `patch`
outputs, a random projection (`proj_cls`, `proj_patch`) and `grad`, the gradient of
sum(cls*proj_cls) + sum(patch*proj_patch) with respect to the pixels. `cases.json` lists the cases
with the options the Rust test passes (pos_resize, heads, backbone).

References: the official code restated in reference_vit.py; timm's own VisionTransformer; Hugging
Face transformers' Dinov2Model / ViTModel; onnxruntime running an ONNX export.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import reference_vit as ref  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "encoder")


def images_for(seed, n, h, w):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def run_reference(forward, images, seed):
    """Outputs, projection and input gradient of a model given as pixels -> (cls, patch)."""
    x = images.clone().requires_grad_(True)
    cls, patch = forward(x)
    g = torch.Generator().manual_seed(seed + 1)
    pc = torch.randn(cls.shape, generator=g)
    pp = torch.randn(patch.shape, generator=g)
    loss = (cls * pc).sum() + (patch * pp).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return {
        "images": images.contiguous(),
        "cls": cls.detach().contiguous(),
        "patch": patch.detach().contiguous(),
        "proj_cls": pc.contiguous(),
        "proj_patch": pp.contiguous(),
        "grad": grad.contiguous(),
    }


def save_expected(name, tensors):
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"{name}.expected.safetensors"))


def official(model):
    return lambda x: model(ref.normalize(x))


def case_official(cases, name, seed, model, images, ckpt_name, ckpt_obj, **opts):
    torch.save(ckpt_obj, os.path.join(OUT, ckpt_name))
    save_expected(name, run_reference(official(model), images, seed))
    cases.append(dict(name=name, checkpoint=ckpt_name, **opts))


def chunked(state, depth, chunks):
    """DINOv2 training layout with block_chunks: blocks.<chunk>.<global index>.<param>."""
    size = depth // chunks
    out = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            out[f"blocks.{int(i) // size}.{i}.{rest}"] = v
        else:
            out[k] = v
    return out


def official_to_hf(state, depth, dim):
    """Official DINOv2 names -> Hugging Face Dinov2Model names (q, k, v split)."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, dim),
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(depth):
        s, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[s + f"attn.qkv.{kind}"].chunk(3, dim=0)
            out[h + f"attention.attention.query.{kind}"] = q
            out[h + f"attention.attention.key.{kind}"] = k
            out[h + f"attention.attention.value.{kind}"] = v
            out[h + f"attention.output.dense.{kind}"] = state[s + f"attn.proj.{kind}"]
            out[h + f"norm1.{kind}"] = state[s + f"norm1.{kind}"]
            out[h + f"norm2.{kind}"] = state[s + f"norm2.{kind}"]
            out[h + f"mlp.fc1.{kind}"] = state[s + f"mlp.fc1.{kind}"]
            out[h + f"mlp.fc2.{kind}"] = state[s + f"mlp.fc2.{kind}"]
        out[h + "layer_scale1.lambda1"] = state[s + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = state[s + "ls2.gamma"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-onnx", action="store_true")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    cases = []

    # 1. DINOv2-style, plain official state dict; non-square input, grid 4x4 -> 3x4 (official offset).
    m = ref.randomize(ref.VisionTransformer(14, 64, 2, 4, pos_grid=4), 1).eval()
    case_official(cases, "dinov2_official", 1, m, images_for(1, 2, 42, 56), "dinov2_official.pth", m.state_dict(),
                  heads=4, pos_resize=None, expect_source="official", expect_arch="custom")
    # Same model with the size-based semantics, to prove the two differ and both are right.
    m.interpolate_offset = 0.0
    save_expected("dinov2_official_size", run_reference(official(m), images_for(1, 2, 42, 56), 1))
    cases.append(dict(name="dinov2_official_size", checkpoint="dinov2_official.pth", heads=4, pos_resize="size",
                      expect_source="official", expect_arch="custom"))
    m.interpolate_offset = 0.1
    # Upsampled grid (4x4 -> 6x5), batch of 3.
    save_expected("dinov2_official_up", run_reference(official(m), images_for(2, 3, 84, 70), 2))
    cases.append(dict(name="dinov2_official_up", checkpoint="dinov2_official.pth", heads=4, pos_resize=None,
                      expect_source="official", expect_arch="custom"))

    # 2. DINOv2 with 4 registers (official: size-based antialiased resize), grid 3x3 -> 4x3.
    m = ref.randomize(ref.VisionTransformer(14, 64, 2, 4, pos_grid=3, num_register_tokens=4, interpolate_offset=0.0,
                                            interpolate_antialias=True), 3).eval()
    case_official(cases, "dinov2_reg", 3, m, images_for(3, 2, 56, 42), "dinov2_reg.pth", m.state_dict(),
                  heads=4, pos_resize=None, expect_source="official", expect_arch="custom")
    # The same weights converted by timm (reg_token, class position folded into cls_token), run by timm.
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn
    tm = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, embed_dim=64, depth=2, num_heads=4,
                           img_size=42, dynamic_img_size=True, num_classes=0).eval()
    tm.load_state_dict(checkpoint_filter_fn(m.state_dict(), tm), strict=True)
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, os.path.join(OUT, "dinov2_reg_timm.safetensors"))
    timm_fwd = lambda x: (lambda t: (t[:, 0], t[:, 5:]))(tm.forward_features(ref.normalize(x)))  # noqa: E731
    exp = run_reference(timm_fwd, images_for(3, 2, 56, 42), 3)
    official_exp = run_reference(official(m), images_for(3, 2, 56, 42), 3)
    print("timm vs official (registers), max diff:", (exp["patch"] - official_exp["patch"]).abs().max().item())
    save_expected("dinov2_reg_timm", exp)
    cases.append(dict(name="dinov2_reg_timm", checkpoint="dinov2_reg_timm.safetensors", heads=4, pos_resize=None,
                      expect_source="timm", expect_arch="custom"))

    # 3. SwiGLU FFN (ViT-g style) in a DINOv2 training checkpoint: teacher/student, backbone. prefix,
    #    chunked blocks, heads beside them.
    m = ref.randomize(ref.VisionTransformer(14, 48, 2, 3, pos_grid=3, swiglu=True), 4).eval()
    s = ref.randomize(ref.VisionTransformer(14, 48, 2, 3, pos_grid=3, swiglu=True), 5).eval()
    teacher = {f"backbone.{k}": v for k, v in chunked(m.state_dict(), 2, 2).items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, 48)
    student = {f"backbone.{k}": v for k, v in chunked(s.state_dict(), 2, 2).items()}
    ckpt = {"teacher": teacher, "student": student, "iteration": 7}
    case_official(cases, "dinov2_swiglu_train", 4, m, images_for(4, 2, 28, 56), "dinov2_swiglu_train.pth", ckpt,
                  heads=3, pos_resize=None, expect_source="official", expect_arch="custom")
    save_expected("dinov2_swiglu_student", run_reference(official(s), images_for(4, 2, 28, 56), 4))
    cases.append(dict(name="dinov2_swiglu_student", checkpoint="dinov2_swiglu_train.pth", heads=3, pos_resize=None,
                      backbone="student", expect_source="official", expect_arch="custom"))

    # 4. DINO v1 (patch 16, no LayerScale) full training checkpoint with args and DINOHead.
    m = ref.randomize(ref.VisionTransformer(16, 64, 2, 4, pos_grid=3, layer_scale=False), 6).eval()
    teacher = {f"backbone.{k}": v for k, v in m.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(8, 64)
    student = {f"module.{k}": v + 0.01 for k, v in teacher.items()}
    ckpt = {"teacher": teacher, "student": student, "epoch": 3,
            "args": argparse.Namespace(arch="vit_small", patch_size=16), "optimizer": {"state": {}, "param_groups": []}}
    case_official(cases, "dino_v1_train", 6, m, images_for(6, 2, 64, 48), "dino_v1_train.pth", ckpt,
                  heads=4, pos_resize=None, expect_source="official", expect_arch="custom")

    # 5. DINO v1 patch 8, official plain state dict, square input at another grid (4x4 -> 5x5).
    m = ref.randomize(ref.VisionTransformer(8, 64, 2, 1, pos_grid=4, layer_scale=False), 7).eval()
    case_official(cases, "dino_v1_p8", 7, m, images_for(7, 1, 40, 40), "dino_v1_p8.pth", m.state_dict(),
                  heads=None, pos_resize=None, expect_source="official", expect_arch="custom")

    # 6. Hugging Face Dinov2Model (safetensors + config.json), size-based resize, run by transformers.
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel
    m = ref.randomize(ref.VisionTransformer(14, 64, 2, 4, pos_grid=4), 8).eval()
    cfg = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=56,
                       layer_norm_eps=1e-6, mlp_ratio=4)
    # Written with the legacy names the Hub's checkpoints use; transformers converts them on load.
    hf_dir = os.path.join(OUT, "hf_dinov2")
    os.makedirs(hf_dir, exist_ok=True)
    cfg.save_pretrained(hf_dir)
    save_file({k: v.contiguous() for k, v in official_to_hf(m.state_dict(), 2, 64).items()},
              os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    hf = Dinov2Model.from_pretrained(hf_dir).eval()
    hf_fwd = lambda x: (lambda t: (t[:, 0], t[:, 1:]))(hf(pixel_values=ref.normalize(x)).last_hidden_state)  # noqa: E731
    imgs = images_for(8, 2, 42, 70)
    save_expected("hf_dinov2", run_reference(hf_fwd, imgs, 8))
    cases.append(dict(name="hf_dinov2", checkpoint="hf_dinov2/model.safetensors", heads=None, pos_resize=None,
                      expect_source="huggingface", expect_arch="custom"))

    # 7. Hugging Face ViTModel holding DINO v1 weights (layernorm_before/after, intermediate/output).
    vcfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, patch_size=16,
                     image_size=48, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu")
    vit = ref.randomize(ViTModel(vcfg, add_pooling_layer=True), 9).eval()
    # Saved by transformers itself (its current names: layers.N.attention.q_proj, ...).
    vit_dir = os.path.join(OUT, "hf_vit_dino")
    vit.save_pretrained(vit_dir, safe_serialization=True)
    vit_fwd = lambda x: (lambda t: (t[:, 0], t[:, 1:]))(  # noqa: E731
        vit(pixel_values=ref.normalize(x), interpolate_pos_encoding=True).last_hidden_state)
    save_expected("hf_vit_dino", run_reference(vit_fwd, images_for(9, 2, 64, 32), 9))
    cases.append(dict(name="hf_vit_dino", checkpoint="hf_vit_dino/model.safetensors", heads=None, pos_resize=None,
                      expect_source="huggingface", expect_arch="custom"))

    # 8. ONNX export of the Hugging Face model (anonymous MatMul initializers, split position
    #    embedding, Resize with sizes), run by onnxruntime.
    if not args.skip_onnx:
        import numpy as np
        import onnxruntime as ort
        imgs = images_for(10, 1, 42, 70)
        path = os.path.join(OUT, "hf_dinov2.onnx")

        class Wrap(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.backbone = inner

            def forward(self, pixel_values):
                return self.backbone(pixel_values=pixel_values).last_hidden_state

        torch.onnx.export(Wrap(hf), (ref.normalize(imgs),), path, input_names=["input_image"],
                          output_names=["tokens"], opset_version=17, dynamo=False, do_constant_folding=True)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        tokens = torch.from_numpy(sess.run(None, {"input_image": ref.normalize(imgs).numpy().astype(np.float32)})[0])
        save_file({"images": imgs.contiguous(), "cls": tokens[:, 0].contiguous(), "patch": tokens[:, 1:].contiguous()},
                  os.path.join(OUT, "hf_dinov2_onnx.expected.safetensors"))
        cases.append(dict(name="hf_dinov2_onnx", checkpoint="hf_dinov2.onnx", heads=None, pos_resize=None,
                          expect_source="onnx", expect_arch="custom", no_grad=True))

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
