"""Issue 12, item 4: image preprocessing exactly as the model's own image processor. A folder's
``preprocessor_config.json`` becomes a recipe at export (`image_processor_recipe`), and
`load_image` reproduces what transformers' processor gives on real photos (skimage's), within
1e-5. Also the bug that started it: ViT at 64x64 was resized to 73 and center-cropped."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import have

pytestmark = pytest.mark.skipif(not have("transformers", "skimage", "PIL"),
                                reason="needs transformers and scikit-image (pip install 'nac[export,models]')")

PROCESSORS = {
    "vit-64": ("ViTImageProcessor", {"size": {"height": 64, "width": 64}}),
    "vit-default": ("ViTImageProcessor", {}),
    "deit": ("DeiTImageProcessor", {}),
    "clip": ("CLIPImageProcessor", {}),
    "clip-odd": ("CLIPImageProcessor", {"size": {"shortest_edge": 61}, "crop_size": {"height": 57, "width": 63}}),
    "convnext-224": ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}),
    "convnext-384": ("ConvNextImageProcessor", {}),
    "resnet": ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3,
                                          "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}),
    "beit": ("BeitImageProcessor", {}),
    "no-normalize": ("ViTImageProcessor", {"do_normalize": False, "resample": 0}),
}


def photos() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return [data / "chelsea.png", data / "coffee.png", data / "motorcycle_left.png", data / "astronaut.png"]


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_matches_the_models_own_processor(name, tmp_path):
    import transformers
    from PIL import Image

    from nac.apps.sources import image_processor_recipe
    from nac.apps.tasks import load_image

    cls, kwargs = PROCESSORS[name]
    proc = getattr(transformers, cls)(**kwargs)
    proc.save_pretrained(tmp_path)
    recipe = image_processor_recipe(tmp_path)
    json.dumps(recipe)  # it is metadata: plain JSON
    for photo in photos():
        want = proc(images=Image.open(photo).convert("RGB"), return_tensors="np")["pixel_values"][0]
        got = load_image(photo, recipe)
        assert got.shape == want.shape, (photo.name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{name} {photo.name}")


@pytest.mark.skipif(not have("torch"), reason="needs torch")
def test_vit_64_classifies_like_transformers(tmp_path):
    """The issue's reproduction: a 64x64 ViT folder through `nac export` + classify_images gives
    transformers' probabilities on the processor's own pixels (not a 73-then-crop resize)."""
    import torch
    import transformers
    from PIL import Image

    import nac
    from nac.apps import sources, tasks

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, num_labels=3,
                                 id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = transformers.ViTForImageClassification(cfg).eval()
    model.save_pretrained(tmp_path / "vit")
    proc = transformers.ViTImageProcessor(size={"height": 64, "width": 64})
    proc.save_pretrained(tmp_path / "vit")
    job = sources.image_classifier_folder(tmp_path / "vit")
    path = nac.export(job.module, job.args, tmp_path / "vit.nac", dynamic_shapes=job.dynamic_shapes,
                      metadata=job.metadata)
    m = nac.load(path)
    photo = photos()[0]
    preds = tasks.classify_images(m, [photo], top_k=3)[0]
    with torch.no_grad():
        pixels = proc(images=Image.open(photo).convert("RGB"), return_tensors="pt")["pixel_values"]
        probs = torch.softmax(model(pixel_values=pixels).logits, -1)[0].numpy()
    for p in preds:
        assert abs(p.probability - float(probs[p.index])) < 1e-5
    assert [p.index for p in preds] == list(np.argsort(-probs))
