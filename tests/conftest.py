import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small shapes-world data set on disk, shared by the training tests."""
    from gentron.data.shapes import write_shapes_dataset

    root = tmp_path_factory.mktemp("shapes") / "data"
    write_shapes_dataset(root, num=96, resolution=16, seed=0)
    return root


def tiny_overrides(data_path, run_seed: int = 0) -> list[str]:
    """A seconds-sized training run: T/4 at 16 px on the packaged MiniLM."""
    return [
        "model.name=GenTron-T/4",
        "model.resolution=16",
        "data.kind=folder",
        f"data.path={data_path}",
        "text.encoders=[{kind: minilm, max_length: 24}]",
        "diffusion.prediction=sample",
        "diffusion.beta_schedule=cosine",
        "diffusion.learn_sigma=false",
        "train.batch_size=8",
        "train.lr=1e-3",
        "train.log_every=2",
        "train.ema_decay=0.9",
        f"train.seed={run_seed}",
        "train.precision=fp32",
        "sample.steps=4",
        "sample.prompts=[a red circle, a blue square]",
    ]
