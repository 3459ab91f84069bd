"""`lepjax adapt` on the demo family: every stage runs, the result improves, a rerun skips stages."""

import json
import os

from lepjax.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")


def test_demo_pipeline_end_to_end_and_resumable(tmp_path, capsys):
    run = tmp_path / "demo"
    args = ["adapt", f"--config={os.path.join(REPO, 'configs', 'demo.py')}",
            f"--config.run_dir={run}",
            f"--config.demo.english_text={FIX}/en_ewt_dev.txt,{FIX}/en_ewt_test.txt",
            f"--config.target_text={FIX}/ru_gsd_dev.txt",
            f"--config.heldout_text={FIX}/ru_gsd_test.txt",
            "--config.demo.base_steps=60", "--config.demo.instruct_steps=10",
            "--config.train.steps=60", "--config.eval.max_lines=200",
            "--config.calibrate.enabled=true", "--config.calibrate.prompts=16",
            "--config.calibrate.steps=5", "--config.calibrate.max_new_tokens=8"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    cpt = summary["chars_per_token"]
    assert cpt["after"] > 2 * cpt["before"]  # the extended vocabulary covers Cyrillic
    bpb = summary["bits_per_byte"]
    assert bpb["adapted_base"] < bpb["base"]  # embedding training on Russian helped
    assert all(0 < r < 1 for r in summary["lep_residuals"].values())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inst = summary["exported"]["adapted_instruct"]
    AutoModelForCausalLM.from_pretrained(inst)
    tok = AutoTokenizer.from_pretrained(inst)
    assert "<|im_start|>" in tok.get_vocab()
    assert tok.apply_chat_template([{"role": "user", "content": "Привет"}], tokenize=False)
    stamps = {f: (run / "stages" / f).stat().st_mtime for f in os.listdir(run / "stages")}
    assert set(stamps) == {f"{s}.json" for s in
                           ("demo", "vocab", "prepare", "train", "propagate", "calibrate",
                            "export", "evaluate")}
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds every stage complete
    assert {f: (run / "stages" / f).stat().st_mtime for f in stamps} == stamps
