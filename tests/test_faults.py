"""Faults: every command that writes is interrupted inside its save, or pointed at a folder it does
not own, or resumed with other data; it leaves no half-written file taken for a finished one,
deletes nothing it did not write, and the next run recovers."""

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcourse.files import claim_folder, file_problem, read_marker, refuse_overlap, write_json
from sdcourse.loading import EMBEDDED_MODEL
from sdcourse.training.config import fast_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    """Stands for a Ctrl-C (or a full disk) in the middle of a save."""


def cut_in_half(path):
    with open(path, "r+b") as opened:
        opened.truncate(opened.seek(0, 2) // 2)


# ----------------------------------------------------------------------------- the rule itself


def test_an_interrupted_write_leaves_the_old_file_and_no_leftover(tmp_path):
    target = tmp_path / "log.json"
    write_json(target, {"steps": 1})

    def fails(temporary):
        temporary.write_text('{"steps": ')
        raise Interrupted

    from sdcourse.files import write_atomically

    with pytest.raises(Interrupted):
        write_atomically(target, fails)
    assert json.loads(target.read_text()) == {"steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]


def test_a_folder_of_someone_elses_files_is_refused_naming_one(tmp_path):
    assert claim_folder(tmp_path / "new", "--out") == tmp_path / "new"  # missing: fine
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "lora_ckpt.pt").write_bytes(b"x")
    claim_folder(tmp_path / "mine", "--out", owned=["lora_ckpt.pt"])  # only its own files: a run to resume
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="holiday.jpg.*--overwrite"):
        claim_folder(tmp_path / "mine", "--out", owned=["lora_ckpt.pt"])
    claim_folder(tmp_path / "mine", "--out", owned=["lora_ckpt.pt"], overwrite=True)
    with pytest.raises(ValueError, match="--out .*--model"):
        refuse_overlap(tmp_path / "m" / "unet", tmp_path / "m", "--out", "--model")


# ----------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def parts():
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer


def test_a_pipeline_save_interrupted_leaves_out_as_it_was_and_the_next_save_recovers(tmp_path, parts, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from sdcourse.training.export import claim_pipeline_folder, save_pipeline

    run, out = tmp_path / "run", tmp_path / "out"
    save_pipeline(*parts, out, run)
    claim_pipeline_folder(out, run)  # the run folder wrote it: a later build may replace it
    with pytest.raises(FileExistsError, match="--out"):
        claim_pipeline_folder(out, tmp_path / "another_run")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    original = StableDiffusionPipeline.save_pretrained

    def interrupted(self, folder, **kwargs):
        self.unet.save_pretrained(f"{folder}/unet")  # diffusers writes part by part
        raise Interrupted

    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", interrupted)
    with pytest.raises(Interrupted):
        save_pipeline(*parts, out, run)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", original)
    save_pipeline(*parts, out, run)
    assert (out / "model_index.json").exists() and not (run / "pipeline.partial").exists()


def test_an_out_folder_moved_aside_by_an_interrupted_save_is_put_back(tmp_path, parts, monkeypatch):
    """An interrupt between moving the old --out aside and moving the new one in: the next save
    starts from the old --out, never deletes it as a leftover."""
    import shutil

    from sdcourse.training import export

    run, out = tmp_path / "run", tmp_path / "out"
    export.save_pipeline(*parts, out, run)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_move = shutil.move

    def move_then_stop(source, target):
        real_move(source, target)
        if str(target).endswith("pipeline.replaced"):
            raise Interrupted

    monkeypatch.setattr(export.shutil, "move", move_then_stop)
    with pytest.raises(Interrupted):
        export.save_pipeline(*parts, out, run)
    assert not out.exists() and (run / "pipeline.replaced").exists()
    monkeypatch.setattr(export.shutil, "move", real_move)
    monkeypatch.setattr(export, "build_pipeline", lambda *args: (_ for _ in ()).throw(Interrupted()))
    with pytest.raises(Interrupted):
        export.save_pipeline(*parts, out, run)  # stopped again, after the start of the next save
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_build_refuses_an_out_folder_of_someone_elses_before_it_trains(tmp_path):
    from sdcourse.training.build_model import main

    mine = tmp_path / "my-pictures"
    mine.mkdir()
    (mine / "cat.png").write_bytes(b"a picture")
    with pytest.raises(SystemExit):
        main(["--fast", "--run", str(tmp_path / "run"), "--out", str(mine), "--quiet"])
    assert [p.name for p in mine.iterdir()] == ["cat.png"] and not (tmp_path / "run").exists()


def test_a_full_build_in_a_fast_builds_run_folder_is_refused_by_stage_and_setting(tmp_path, monkeypatch):
    from sdcourse.training.build_model import StageError, main

    monkeypatch.delenv("SDCOURSE_FAST", raising=False)  # a full build, even where the suite runs in fast mode
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "config.json", fast_config().to_dict())
    shutil.copytree(EMBEDDED_MODEL / "vae", run / "vae_decoder")  # a finished stage made before markers
    config_before = (run / "config.json").read_text()
    with pytest.raises(StageError, match=r"vae_decoder: made with n_train=768 \(this run: 30000\).*vae_steps=12"):
        main(["--run", str(run), "--out", str(tmp_path / "out"), "--stop-after", "data", "--quiet"])
    assert (run / "config.json").read_text() == config_before  # nothing was written
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "vae_decoder"]


def test_the_build_reuses_the_second_editions_vae_and_clip_and_refuses_a_rule_phase_of_another_rule(tmp_path):
    """The second edition's VAE and its CLIP's three phases read no caption rule: a build under
    the rule reuses them, then trains the CLIP's rule phase and the U-Net. A rule phase made
    under another rule is refused by stage and setting, before anything is drawn."""
    from sdcourse.files import write_marker
    from sdcourse.training.build_model import STAGE_OUTPUTS, StageError, check_run_folder, stage_marker
    from sdcourse.training.config import full_config

    second = Path(__file__).resolve().parents[1] / "build-stages" / "second-edition"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("vae_decoder", "clip_words"):
        shutil.copytree(second / name, run / name)
    shutil.copy(second / "config.json", run / "config.json")
    previous = json.loads((run / "config.json").read_text())
    check_run_folder(run, full_config(), previous)  # the same settings for both stages: reused

    shutil.copytree(second / "clip_words", run / "clip_rule")  # stands in for a rule phase's CLIP
    other = full_config(class_share=0.3)
    write_marker(stage_marker(run, "clip_rule"), run, STAGE_OUTPUTS["clip_rule"].files,
                 other.pick(*STAGE_OUTPUTS["clip_rule"].settings))
    with pytest.raises(StageError, match=r"clip_rule: made with class_share=0.3 \(this run: 0.4\)") as refused:
        check_run_folder(run, full_config(), previous)
    assert "clip_words" not in str(refused.value) and "vae_decoder" not in str(refused.value)


def test_the_class_phase_refuses_its_pictures_drawn_under_another_weight_but_may_train_longer(tmp_path):
    """The class phase's cached pictures are reused only under the rule they were drawn with;
    more class-phase steps (training a finished run on) keep them."""
    from sdcourse.training.build_model import StageError, check_run_folder
    from sdcourse.training.config import full_config

    run = tmp_path / "run"
    (run / "class_phase").mkdir(parents=True)
    (run / "class_phase" / "train_set.npz").write_bytes(b"stands in for the cached pictures")
    previous = full_config(class_phase_held_out_weight=2.0).to_dict()
    check_run_folder(run, full_config(class_phase_held_out_weight=2.0, class_phase_steps=3200), previous)
    with pytest.raises(StageError, match=r"class_phase/train_set.npz: made with class_phase_held_out_weight=2.0 "
                                         r"\(this run: 3.0\)"):
        check_run_folder(run, full_config(), previous)



def test_known_weights_added_later_count_as_all_ones_in_older_run_folders_and_checkpoints(tmp_path):
    """A run folder and a class-phase checkpoint made before class_phase_known_weights existed were
    made with all weights 1: they resume under all ones and are refused, by name, under others."""
    from sdcourse.training.build_model import StageError, check_run_folder
    from sdcourse.training.config import full_config
    from sdcourse.training.trainer import CheckpointError, check_resumable

    run = tmp_path / "run"
    (run / "class_phase").mkdir(parents=True)
    (run / "class_phase" / "train_set.npz").write_bytes(b"stands in for the cached pictures")
    older = full_config().to_dict()
    del older["class_phase_known_weights"]
    check_run_folder(run, full_config(class_phase_known_weights=(1.0, 1.0, 1.0)), older)
    with pytest.raises(StageError, match=r"class_phase/train_set.npz: made with class_phase_known_weights="
                                         r"\[1.0, 1.0, 1.0\] \(this run: \[1.3, 0.75, 1.0\]\)"):
        check_run_folder(run, full_config(class_phase_known_weights=(1.3, 0.75, 1.0)), older)

    saved = {"class_phase_held_out_weight": 3.0}  # a checkpoint's record from before the setting
    check_resumable(saved, {**saved, "class_phase_known_weights": (1.0, 1.0, 1.0)}, tmp_path / "ckpt.pt", "U-Net")
    with pytest.raises(CheckpointError, match=r"class_phase_known_weights: the checkpoint has \[1.0, 1.0, 1.0\], "
                                              r"this run asks for \[1.3, 0.75, 1.0\]"):
        check_resumable(saved, {**saved, "class_phase_known_weights": (1.3, 0.75, 1.0)}, tmp_path / "ckpt.pt", "U-Net")


def build_for(run, **settings):
    from sdcourse.training.build_model import Build

    b = Build(fast_config(classifier_steps=2, classifier_batch=8, classifier_n_train=32, **settings), run,
              run / "out", progress=False)
    b.eval_n = 8
    return b


def test_half_a_stage_is_not_finished_and_a_legacy_stage_gets_its_marker(tmp_path):
    from sdcourse.training.build_model import StageError, finished, stage_marker

    run = tmp_path / "run"
    (run / "vae").mkdir(parents=True)
    shutil.copy(EMBEDDED_MODEL / "vae" / "config.json", run / "vae")  # diffusers writes the config first
    b = build_for(run)
    assert not finished(b, "vae")
    shutil.copy(EMBEDDED_MODEL / "vae" / "diffusion_pytorch_model.safetensors", run / "vae")
    assert finished(b, "vae")  # every file loads: taken once, and marked
    assert set(read_marker(stage_marker(run, "vae"))["files"]) == {"vae/config.json",
                                                                 "vae/diffusion_pytorch_model.safetensors"}
    weights = run / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # damaged after it was marked: refused by name
    with pytest.raises(StageError, match="vae stage .*diffusion_pytorch_model.safetensors"):
        finished(b, "vae")


def test_the_classifier_stage_interrupted_inside_its_save_is_redone(tmp_path, monkeypatch):
    import safetensors.torch

    from sdcourse.evaluate import CLASSIFIER_FILE
    from sdcourse.training.build_model import classifier_stage, finished

    run = tmp_path / "run"
    run.mkdir()
    (run / CLASSIFIER_FILE).write_bytes(b"\x10\x00\x00\x00")  # a truncated file from before: not finished
    b = build_for(run)
    original = safetensors.torch.save_file

    def interrupted(tensors, filename, **kwargs):  # half of the file written, then the interrupt
        original(tensors, filename, **kwargs)
        cut_in_half(filename)
        raise Interrupted

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(Interrupted):
        classifier_stage(b)
    assert not finished(b, CLASSIFIER_FILE)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    classifier_stage(b)  # the next run trains on from its checkpoint and saves it whole
    assert file_problem(run / CLASSIFIER_FILE) is None and finished(b, CLASSIFIER_FILE)


# ----------------------------------------------------------------------------- fine-tuning


def picture_folder(folder, colour):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"a picture number {i}")
    return folder


LORA = ["--batch", "2", "--checkpoint-every", "1", "--threads", "1", "--quiet"]


def test_train_lora_never_writes_into_its_model(tmp_path):
    from sdcourse.training.train_lora import main

    model = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODEL, model)
    before = {p: p.stat().st_mtime_ns for p in model.rglob("*")}
    with pytest.raises(SystemExit):
        main(["--concept", "star", "--full-unet", "--model", str(model), "--out", str(model), "--steps", "1", *LORA])
    with pytest.raises(SystemExit):  # --overwrite does not change that
        main(["--concept", "star", "--full-unet", "--model", str(model), "--out", str(model), "--overwrite",
              "--steps", "1", *LORA])
    assert {p: p.stat().st_mtime_ns for p in model.rglob("*")} == before


def test_train_longer_never_writes_into_its_model(tmp_path, capsys):
    from sdcourse.training.train_longer import main

    with pytest.raises(SystemExit):
        main(["--from", str(EMBEDDED_MODEL), "--out", str(EMBEDDED_MODEL), "--steps", "1", "--run", str(tmp_path)])
    assert "--from" in capsys.readouterr().err


def test_a_resumed_train_lora_refuses_other_pictures_and_recovers_from_an_interrupted_save(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from sdcourse.lora import LORA_FILE
    from sdcourse.training.train_lora import main
    from sdcourse.training.trainer import CheckpointError

    pictures, out = picture_folder(tmp_path / "pictures", (200, 30, 30)), tmp_path / "out"
    args = ["--images", str(pictures), "--out", str(out), *LORA]
    original = StableDiffusionPipeline.save_lora_weights

    def interrupted(folder, **kwargs):  # half of the adapter written, then the interrupt
        original(folder, **kwargs)
        cut_in_half(f"{folder}/{LORA_FILE}")
        raise Interrupted

    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", interrupted)
    with pytest.raises(Interrupted):
        main([*args, "--steps", "2"])
    assert not (out / LORA_FILE).exists()  # no half adapter in its place
    monkeypatch.undo()
    main([*args, "--steps", "2"])  # the next run resumes at its last step and saves the adapter whole
    assert file_problem(out / LORA_FILE) is None

    picture_folder(pictures, (30, 30, 200))  # the same folder, the same count, other pictures
    with pytest.raises(CheckpointError, match="data_sha256"):
        main([*args, "--steps", "3"])


def test_the_judges_trainer_refuses_an_existing_out_file(tmp_path, monkeypatch, capsys):
    taken = tmp_path / "judge.safetensors"
    taken.write_bytes(b"someone's")
    monkeypatch.setattr(sys, "argv", ["sdcourse.evaluate", "--train", "--out", str(taken)])
    with pytest.raises(SystemExit):
        runpy.run_module("sdcourse.evaluate", run_name="__main__")
    assert "--overwrite" in capsys.readouterr().err and taken.read_bytes() == b"someone's"
