"""Residual quantizers: RVQ (factorized, L2-normalised, dropout, dead-code restart) and FSQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from soundry.nn.quantize import FSQStage, ResidualQuantizer, VQStage


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-off costs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rvq(dim: int = 16, k: int = 4, size: int = 32, cdim: int = 4, **kw) -> ResidualQuantizer:
    return ResidualQuantizer([VQStage(dim, size, cdim) for _ in range(k)], **kw)


def test_rvq_shapes_and_eval_levels() -> None:
    torch.manual_seed(0)
    q = rvq().eval()
    z = torch.randn(3, 16, 10)
    out = q(z)
    assert out.quantized.shape == z.shape
    assert out.codes.shape == (3, 4, 10) and out.codes.dtype == torch.long
    assert out.latents.shape == (3, 4 * 4, 10)
    assert out.commitment_loss.dim() == 0 and out.codebook_loss.dim() == 0
    assert out.levels.tolist() == [4, 4, 4]
    two = q(z, n_levels=2)
    assert two.codes.shape == (3, 2, 10)
    assert torch.equal(two.codes, out.codes[:, :2])
    assert torch.equal(q.encode(z, 3), out.codes[:, :3])
    with pytest.raises(ValueError):
        q(z, n_levels=5)


def test_decode_codes_from_any_prefix_matches_forward() -> None:
    torch.manual_seed(0)
    q = rvq().eval()
    z = torch.randn(2, 16, 7)
    with torch.no_grad():
        for n in range(1, 5):
            out = q(z, n_levels=n)
            assert torch.allclose(q.decode_codes(out.codes), out.quantized, atol=1e-6)
        with pytest.raises(ValueError):
            q.decode_codes(torch.full((2, 1, 7), 32))


def test_lookup_is_nearest_by_cosine_similarity() -> None:
    torch.manual_seed(0)
    stage = VQStage(8, 16, 3)
    z_e = torch.randn(2, 3, 5)
    codes = stage.lookup(z_e)
    book = torch.nn.functional.normalize(stage.codebook.weight, dim=1)
    flat = torch.nn.functional.normalize(z_e.transpose(1, 2).reshape(-1, 3), dim=1)
    dist = torch.cdist(flat, book)  # Euclidean on unit vectors == cosine ranking
    assert torch.equal(codes.reshape(-1), dist.argmin(dim=1))
    # scaling a latent does not change its code (normalised lookup)
    assert torch.equal(stage.lookup(z_e * 5.0), codes)


def test_straight_through_and_losses() -> None:
    torch.manual_seed(0)
    stage = VQStage(8, 16, 3)
    residual = torch.randn(2, 8, 5, requires_grad=True)
    out = stage(residual)
    z_q = stage.embed(out.codes)
    assert torch.allclose(out.commitment, (out.latents - z_q).pow(2).mean(dim=(1, 2)))
    assert torch.allclose(out.codebook, out.commitment)  # same value, different gradients
    out.out.sum().backward()
    assert residual.grad is not None and residual.grad.abs().sum() > 0  # gradient passes
    # the codebook learns only from the codebook loss
    assert stage.codebook.weight.grad is None or stage.codebook.weight.grad.abs().sum() == 0
    stage.zero_grad()
    out = stage(residual)
    out.codebook.sum().backward()
    assert stage.codebook.weight.grad.abs().sum() > 0
    assert stage.in_proj.weight_v.grad is None or stage.in_proj.weight_v.grad.abs().sum() == 0


def test_quantizer_dropout_uses_varying_level_counts() -> None:
    q = rvq(k=8, dropout=0.5).train()
    z = torch.randn(16, 16, 4)
    seen = set()
    for _ in range(10):
        out = q(z)
        levels = out.levels
        assert int((levels < 8).sum()) <= 8  # at most int(16 * 0.5) items drop levels
        assert int((levels == 8).sum()) >= 8
        assert levels.min() >= 1
        seen.update(levels.tolist())
        assert out.codes.shape == (16, 8, 4)  # every level computed in training
    assert len(seen) >= 5  # many different level counts


def test_dropped_levels_do_not_contribute() -> None:
    torch.manual_seed(0)
    q = rvq(k=4, dropout=1.0).train()
    z = torch.randn(8, 16, 5)
    out = q(z)
    for i, n in enumerate(out.levels.tolist()):
        with torch.no_grad():
            expect = q.decode_codes(out.codes[i : i + 1, :n])
        assert torch.allclose(out.quantized[i : i + 1], expect, atol=1e-5)


def test_no_dropout_in_eval_mode_and_explicit_levels_in_training() -> None:
    q = rvq(k=6, dropout=1.0).eval()
    z = torch.randn(8, 16, 3)
    assert q(z).levels.tolist() == [6] * 8
    q.train()
    assert q(z, n_levels=2).levels.tolist() == [2] * 8


def test_dropout_draws_repeat_for_the_same_seed_and_step() -> None:
    a, b = rvq(k=8, dropout=0.5, seed=3), rvq(k=8, dropout=0.5, seed=3)
    assert torch.equal(a.draw_levels(32, 7), b.draw_levels(32, 7))
    assert not torch.equal(a.draw_levels(32, 7), a.draw_levels(32, 8))


def test_rvq_error_falls_as_levels_are_added_on_a_fitted_example() -> None:
    torch.manual_seed(0)
    q = rvq(dim=16, k=4, size=32, cdim=4, dropout=0.5).train()
    data = torch.randn(32, 16, 8)  # 256 vectors
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    for _ in range(200):
        out = q(data)
        loss = (out.quantized - data).pow(2).mean() + out.codebook_loss + 0.25 * out.commitment_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        errors = [(q(data, n_levels=n).quantized - data).pow(2).mean().item() for n in range(1, 5)]
    assert all(b < a * 0.97 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.7 * data.pow(2).mean().item(), errors


def test_fsq_round_trip() -> None:
    torch.manual_seed(0)
    stage = FSQStage(6, [8, 5, 5, 3])
    assert stage.codebook_size == 600
    # every code maps to grid values and back to itself
    codes = torch.arange(600).reshape(2, 300)
    values = stage.codes_to_values(codes)
    assert values.shape == (2, 4, 300) and values.abs().max() <= 1.0
    assert torch.equal(stage.values_to_codes(values), codes)
    # quantized values lie on the grid, and decoding the codes gives the forward output
    z = torch.randn(3, 6, 11) * 3
    out = stage(z)
    assert out.codes.min() >= 0 and out.codes.max() < 600
    with torch.no_grad():
        assert torch.allclose(stage.decode_codes(out.codes), out.out, atol=1e-6)
    grid = stage.quantize(stage.in_proj(z))
    for j, n in enumerate([8, 5, 5, 3]):
        steps = grid[:, j] * (n // 2)
        assert torch.allclose(steps, steps.round(), atol=1e-5)
        assert len(steps.round().unique()) <= n
    # straight-through: gradients reach the input
    z.requires_grad_(True)
    stage(z).out.sum().backward()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("levels", [[2, 2, 2, 2, 2, 2, 2, 2], [4, 4, 4, 4], [8, 5, 5, 5], [2, 3]])
def test_fsq_every_level_count_yields_valid_codes_covering_the_grid(levels: list[int]) -> None:
    """Even counts need an offset grid; a level count of 2 once gave NaN codes."""
    torch.manual_seed(0)
    stage = FSQStage(6, levels)
    z = torch.randn(64, 6, 50) * 4
    with torch.no_grad():
        out = stage(z)
        values = stage.quantize(stage.in_proj(z))
    assert torch.isfinite(values).all()
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < stage.codebook_size
    for j, n in enumerate(levels):  # large inputs reach every one of the n values
        assert len(values[:, j].unique()) == n
    assert torch.equal(stage.codes_to_values(out.codes), values)


def test_residual_fsq_levels_prefix() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer([FSQStage(8, [5, 5, 5]) for _ in range(3)]).eval()
    z = torch.randn(2, 8, 9)
    with torch.no_grad():
        out = q(z)
        assert out.codes.shape == (2, 3, 9)
        assert torch.allclose(q.decode_codes(out.codes), out.quantized, atol=1e-5)
        assert float(out.commitment_loss) == 0.0


# ----------------------------------------------------------------------------- restarts


def _restart_quantizer(seed: int) -> ResidualQuantizer:
    torch.manual_seed(0)
    return rvq(dim=8, k=2, size=64, cdim=4, dead_code_threshold=1.0, restart_every=3, seed=seed)


def test_dead_codes_are_restarted_from_batch_latents() -> None:
    q = _restart_quantizer(seed=0).train()
    before = [s.codebook.weight.detach().clone() for s in q.stages]
    torch.manual_seed(1)
    z = torch.randn(2, 8, 4)  # 8 frames cannot use 64 codes: most are dead
    for _ in range(3):
        out = q(z)
    assert int(q.steps) == 3
    for stage, old in zip(q.stages, before, strict=True):
        changed = (stage.codebook.weight != old).any(dim=1)
        assert changed.sum() >= 50  # the dead ones were replaced
        assert float(stage.usage.sum()) == 0.0  # counters restart
    # The new rows are projected latents of that very pass: the first use of each latent is
    # an exact copy (same values, no arithmetic), repeats are jittered by 0.1 x the spread.
    lat = out.latents.detach().reshape(2, 2, 4, 4).permute(1, 0, 3, 2).reshape(2, -1, 4)
    book = q.stages[0].codebook.weight.detach()
    new_rows = book[(book != before[0]).any(1)]
    # (explicit differences: cdist's matmul path is not exact)
    dists = (new_rows[:, None] - lat[0][None]).norm(dim=-1).min(dim=1).values
    assert int((dists == 0).sum()) == lat.shape[1]  # every latent used once exactly
    spread = lat[0].std(dim=0).norm()
    assert float(dists.max()) < 0.1 * float(spread) * 6  # the rest: jittered copies
    assert torch.unique(new_rows, dim=0).shape[0] == new_rows.shape[0]  # no exact ties


def test_restarts_follow_optimizer_steps_not_forward_passes() -> None:
    """Micro-batches of one step and passes without gradients never add restarts."""
    torch.manual_seed(2)
    z = torch.randn(2, 8, 4)
    q = _restart_quantizer(seed=0).train()  # restart_every=3
    start = q.stages[0].codebook.weight.detach().clone()
    for step in (1, 1, 2, 2):  # two micro-batches per step
        q(z, step=step)
    with torch.no_grad():  # a discriminator-only phase: the generator only supplies fakes
        for _ in range(5):
            q(z)
    assert int(q.steps) == 2
    assert torch.equal(q.stages[0].codebook.weight, start)  # no restart yet
    q(z, step=3)
    q(z, step=3)  # the second micro-batch of step 3 must not restart again
    assert int(q.steps) == 3
    assert float(q.stages[0].usage.sum()) == 2 * 4  # counters restarted at the first pass only


def test_data_init_sets_codebooks_from_the_first_batch() -> None:
    torch.manual_seed(3)
    q = ResidualQuantizer([VQStage(8, 16, 4) for _ in range(2)], init="data", seed=0).train()
    z = torch.randn(4, 8, 10)
    with torch.no_grad():
        q(z)  # no gradients: not a training step, nothing initialised
    assert not bool(q.initialized)
    out = q(z)
    assert bool(q.initialized)
    lat = out.latents.detach().reshape(4, 2, 4, 10).permute(1, 0, 3, 2).reshape(2, -1, 4)
    for i, stage in enumerate(q.stages):
        d = (stage.codebook.weight.detach()[:, None] - lat[i][None]).norm(dim=-1).min(1).values
        assert float(d.max()) < 1e-5  # 40 latents >= 16 codes: distinct copies (fp32 rounding)
    assert min(len(set(c.tolist())) for c in out.codes.transpose(0, 1).reshape(2, -1)) >= 12
    book = torch.cat([s.codebook.weight.detach().clone() for s in q.stages])
    q(z)  # no optimizer step between the passes: a second init would draw other latents
    assert torch.equal(torch.cat([s.codebook.weight.detach() for s in q.stages]), book)


def test_bypass_passes_the_latent_for_a_fraction_of_items() -> None:
    torch.manual_seed(4)
    q = rvq(bypass=0.5, seed=1).train()
    z = torch.randn(64, 16, 5)
    out = q(z)
    same = (out.quantized == z).flatten(1).all(dim=1)
    assert 16 <= int(same.sum()) <= 48  # about half the items bypass quantization
    assert bool(((out.quantized - z).abs().flatten(1).amax(dim=1) > 0)[~same].all())
    q.eval()
    assert not bool((q(z).quantized == z).flatten(1).all(dim=1).any())  # never at inference


def test_restart_choices_are_deterministic_in_one_process() -> None:
    torch.manual_seed(5)
    z = torch.randn(2, 8, 4)
    books = []
    for seed in (0, 0, 1):
        q = _restart_quantizer(seed).train()
        for _ in range(3):
            q(z)
        books.append(torch.cat([s.codebook.weight.detach() for s in q.stages]))
    assert torch.equal(books[0], books[1])  # same seed, step and data: same restart
    assert not torch.equal(books[0], books[2])  # another seed: other choices


WORKER = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    from soundry.nn.quantize import ResidualQuantizer, VQStage
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    init = sys.argv[5]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)  # identical initial weights on every rank
    q = ResidualQuantizer([VQStage(8, 64, 4) for _ in range(2)], dead_code_threshold=1.0,
                          restart_every=2, restart_candidates=16, seed=11, init=init).train()
    start = torch.cat([s.codebook.weight.detach().clone() for s in q.stages])
    torch.manual_seed(100 + rank)  # different data on every rank
    for _ in range(4):
        q(torch.randn(2, 8, 3))
    book = torch.cat([s.codebook.weight.detach() for s in q.stages])
    json.dump({"book": book.tolist(), "changed": int((book != start).any(1).sum())},
              open(out, "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("init", ["random", "data"])
def test_restarts_are_identical_on_every_rank(tmp_path: Path, init: str) -> None:
    """Two gloo ranks with different data make the same init and restart choices."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                "2",
                str(tmp_path / "store"),
                str(tmp_path / f"r{r}.json"),
                init,
            ],
            env=env,
        )
        for r in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
    assert r0["changed"] > 50
    assert r0["book"] == r1["book"]


def test_euclidean_lookup_takes_the_nearest_code_by_distance() -> None:
    stage = VQStage(4, 3, 2, lookup="euclidean")
    with torch.no_grad():
        stage.codebook.weight.copy_(torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, -1.0]]))
    z = torch.tensor([[[0.9, 8.0, 0.1], [0.0, 0.5, -3.0]]])  # [1, d=2, F=3]
    # cosine would send (8, 0.5) to code 0 (same direction as code 1, listed first)
    assert stage.lookup(z).tolist() == [[0, 1, 2]]
    cosine = VQStage(4, 3, 2)
    cosine.codebook.weight.data.copy_(stage.codebook.weight.data)
    assert cosine.lookup(z).tolist()[0][1] == 0
    with pytest.raises(ValueError, match="lookup"):
        VQStage(4, 3, 2, lookup="manhattan")


def test_bypass_decays_to_zero_over_bypass_steps() -> None:
    torch.manual_seed(5)
    q = rvq(bypass=0.5, bypass_steps=100, seed=1).train()
    assert [q.bypass_at(s) for s in (0, 50, 100, 200)] == [0.5, 0.25, 0.0, 0.0]
    z = torch.randn(64, 16, 5)
    passed = [int((q(z, step=s).quantized == z).flatten(1).all(dim=1).sum()) for s in (1, 100)]
    assert passed[0] >= 16
    assert passed[1] == 0  # the decoder ends on quantized latents only


def test_weights_saved_without_the_init_flag_load_as_trained() -> None:
    """A codebook loaded from an older checkpoint or export is never re-initialised."""
    torch.manual_seed(6)
    saved = ResidualQuantizer([VQStage(8, 16, 4)], init="data").state_dict()
    del saved["initialized"]
    q = ResidualQuantizer([VQStage(8, 16, 4)], init="data")
    q.load_state_dict(saved)
    book = q.stages[0].codebook.weight.detach().clone()
    q.train()(torch.randn(2, 8, 10))
    assert bool(q.initialized)
    assert torch.equal(q.stages[0].codebook.weight, book)  # no data init over loaded codes
    fsq = ResidualQuantizer([FSQStage(8, [4, 4])])
    state = {**fsq.state_dict(), "initialized": torch.tensor(False)}  # FSQ saved with a flag
    fsq.load_state_dict(state)
    assert "initialized" not in fsq.state_dict()


def test_restart_from_identical_latents_does_not_crash() -> None:
    torch.manual_seed(7)
    q = ResidualQuantizer([VQStage(8, 256, 4)], init="data", restart_candidates=256).train()
    z = torch.ones(2, 8, 5)  # every frame the same latent: one distinct candidate
    q(z)
    book = q.stages[0].codebook.weight.detach()
    assert torch.isfinite(book).all()
    assert torch.unique(book, dim=0).shape[0] == 256  # jittered, no exact ties


def test_data_init_offers_enough_latents_for_a_large_codebook() -> None:
    torch.manual_seed(8)
    q = ResidualQuantizer([VQStage(8, 512, 4)], init="data", restart_candidates=64).train()
    out = q(torch.randn(8, 8, 100))  # 800 latents for 512 codes
    lat = out.latents.detach().permute(0, 2, 1).reshape(-1, 4)
    book = q.stages[0].codebook.weight.detach()
    # The init projects under no_grad, the pass itself with gradients: the same math through
    # other kernels, so equal to fp32 rounding; a jittered copy would be ~0.1 x spread away.
    near = (book[:, None] - lat[None]).abs().amax(dim=-1).min(dim=1).values < 1e-5
    assert int(near.sum()) == 512  # every code a latent of the batch, none jittered


def test_init_from_marks_loaded_codebooks_as_initialised(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from soundry.train.init_from import init_from

    torch.manual_seed(9)
    src = ResidualQuantizer([VQStage(8, 16, 4)], init="data")
    state = {k: v for k, v in src.state_dict().items() if k != "initialized"}
    net = torch.nn.ModuleDict({"quantizer": ResidualQuantizer([VQStage(8, 16, 4)], init="data")})
    flat = {f"quantizer.{k}": v for k, v in state.items()}
    save_file(flat, str(tmp_path / "w.safetensors"))
    init_from(tmp_path / "w.safetensors", {"generator": net})
    assert bool(net["quantizer"].initialized)  # step 1 will not overwrite the loaded codes
