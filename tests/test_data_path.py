"""The training data path: batches come from a DataLoader over the feature store, whole batches at
a time, the same with worker processes as without, and leave the augmentation RNG alone."""

import torch

from conftest import tiny_config
from genrenet.training import build_learner, prepare_data


def batches_of(learner, epoch: int) -> list:
    learner.batches.set_epoch(epoch, skip=0)
    return list(learner.loader)


def test_worker_processes_read_the_same_batches(tmp_path, class_folder):
    config = tiny_config(tmp_path, class_folder)
    data = prepare_data(config)
    serial = build_learner(config, data, torch.device("cpu"))
    parallel = build_learner(tiny_config(tmp_path, class_folder, data={"num_workers": 2}), data, torch.device("cpu"))
    assert parallel.loader.persistent_workers and not parallel.loader.pin_memory  # pinned memory is for CUDA
    for epoch in (1, 2):  # the persistent workers serve the next epoch's order too
        for (x, y, tracks), (px, py, ptracks) in zip(
            batches_of(serial, epoch), batches_of(parallel, epoch), strict=True
        ):
            assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float16  # sent as stored, float on the device
            assert torch.equal(x, px) and torch.equal(y, py) and torch.equal(tracks, ptracks)
    every = torch.cat([data.train.features[i] for i in range(len(data.train.features))])
    x, _, _ = batches_of(serial, 1)[0]
    matches = [(every == clip).flatten(1).all(dim=1).nonzero().flatten().tolist() for clip in x[:, 0]]
    assert all(matches)  # each batch clip is a stored clip


def test_reading_batches_leaves_the_global_rng_alone(tmp_path, class_folder):
    config = tiny_config(tmp_path, class_folder)
    learner = build_learner(config, prepare_data(config), torch.device("cpu"))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    batches_of(learner, 1)
    assert torch.equal(torch.rand(3), expected)  # augmentation draws what it drew before the DataLoader


def test_train_compile_compiles_the_steps_but_saves_the_plain_model(tmp_path, class_folder):
    config = tiny_config(tmp_path, class_folder, train={"compile": True})
    learner = build_learner(config, prepare_data(config), torch.device("cpu"))
    assert isinstance(learner.stepper, torch._dynamo.eval_frame.OptimizedModule)
    assert learner.stepper._orig_mod is learner.model
    assert not any(key.startswith("_orig_mod") for key in learner.model.state_dict())
