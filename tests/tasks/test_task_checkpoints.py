"""The base task's checkpoint convention and its one loader.

Every task type (CTC, Gram-CTC, robust encoder with its critic, cold-fusion seq2seq with its
embedded LM, RNN LM, TCNLM) goes through ``trainer.save_checkpoint`` and
:meth:`SpeechLabTask.load` and comes back as the same class with the same tensors and the same
vocabularies, GramSet or LM; its state is under one ``checkpoint["speechlab"]`` key and no
``speechlab_*`` key is written. The same checkpoint moved back into the layout of earlier
versions (top-level ``speechlab_vocab``, ``speechlab_grams``, ...) loads the same way, through
``load``, Lightning's ``load_from_checkpoint``, ``load_language_model`` and the CLI's reading of
embedded files. A checkpoint that is neither, or of a format this version does not read, or of
another task class, or with weights that do not fit, is one line naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml

from speechlab.callbacks import RNGState
from speechlab.cli import main
from speechlab.data.grams import GramSet
from speechlab.data.text import CharVocab
from speechlab.data.vocab import WordVocab
from speechlab.nn.decoder import AttentionDecoderConfig
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.tasks import SpeechLabTask, load
from speechlab.tasks.base import LEGACY_KEYS, CheckpointError, checkpoint_state
from speechlab.tasks.ctc import CTCTask
from speechlab.tasks.gram_ctc import GramCTCTask, as_gram_ctc
from speechlab.tasks.rnnlm import LMCheckpointError, RNNLMTask, load_language_model
from speechlab.tasks.robust import RobustASRTask
from speechlab.tasks.seq2seq import Seq2SeqTask
from speechlab.tasks.topic_lm import TopicLMTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENC = SpeechEncoderConfig(hidden_size=16, num_layers=1, conv_channels=4, rnn_type="gru", dropout=0.0)
DEC = AttentionDecoderConfig(embed_dim=8, hidden_size=16, attention_dim=8, location_channels=2,
                             output_dim=16, fusion_dim=8, dropout=0.0)
LM_WORDS = WordVocab(["<pad>", "<s>", "</s>", "<unk>", "the", "cat", "sat", "mat"], unk="<unk>")
TOPIC_WORDS = WordVocab(["cat", "sat", "mat", "dog"])


def save(task: pl.LightningModule, path: Path) -> Path:
    """``task`` saved as ``trainer.fit`` saves it (Lightning's checkpoint, the task's hooks)."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=0, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def make_lm(path: Path) -> Path:
    torch.manual_seed(3)
    return save(RNNLMTask(embed_dim=8, hidden_size=16, num_layers=1, dropout=0.0), path)


def make_task(kind: str, tmp_path: Path) -> SpeechLabTask:
    """A small task of each kind, with what its checkpoint must carry besides its weights."""
    torch.manual_seed(0)
    if kind == "ctc":
        return CTCTask(encoder=ENC)
    if kind == "gram_ctc":
        grams = tmp_path / "grams.json"
        GramSet.from_ngrams(CharVocab(), ["th", "he", "e "]).save(grams)
        return GramCTCTask(grams=str(grams), encoder=ENC, ctc_weight=0.3)
    if kind == "robust":
        return RobustASRTask(encoder=ENC, lambda_adv=0.5)
    if kind == "seq2seq":
        return Seq2SeqTask(encoder=ENC, decoder=DEC, fusion="cold",
                           lm_checkpoint=str(make_lm(tmp_path / "lm.ckpt")))
    if kind == "rnnlm":
        return RNNLMTask(embed_dim=8, hidden_size=16, num_layers=1, dropout=0.0)
    if kind == "tcnlm":
        task = TopicLMTask(num_topics=3, embed_dim=8, hidden_size=8, factor_size=4, topic_hidden=8,
                           lm_vocab_size=len(LM_WORDS), topic_vocab_size=len(TOPIC_WORDS))
        task.set_vocabularies(LM_WORDS, TOPIC_WORDS)
        return task
    raise ValueError(kind)


KINDS = ["ctc", "gram_ctc", "robust", "seq2seq", "rnnlm", "tcnlm"]
#: kind -> the entries its checkpoint["speechlab"] holds besides format, class_path, embedded_files
STATE_KEYS = {"ctc": {"vocab"}, "gram_ctc": {"vocab", "grams"}, "robust": {"vocab"},
              "seq2seq": {"vocab", "lm"}, "rnnlm": {"vocab", "lm_config"},
              "tcnlm": {"lm_vocab", "topic_vocab"}}


def same_task(a: SpeechLabTask, b: SpeechLabTask) -> None:
    """Same class, the same tensors, the same vocabularies / GramSet / LM."""
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    for attr in ("vocab", "grams", "lm_vocab", "topic_vocab"):
        assert getattr(a, attr, None) == getattr(b, attr, None), attr
    if isinstance(a, Seq2SeqTask):
        la, lb = a.lm.state_dict(), b.lm.state_dict()
        assert all(torch.equal(la[k], lb[k]) for k in la) and not b.lm.training


def to_old_layout(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` as earlier versions wrote it: the entries of ``checkpoint["speechlab"]``
    as top-level ``speechlab_*`` keys (embedded files only when there were any), no format, no
    class record."""
    old = {k: v for k, v in checkpoint.items() if k != "speechlab"}
    state = checkpoint["speechlab"]
    for key, entry in LEGACY_KEYS.items():
        if entry in state and (entry != "embedded_files" or state[entry]):
            old[key] = state[entry]
    return old


@pytest.mark.parametrize("kind", KINDS)
def test_every_task_round_trips_through_load(kind, tmp_path):
    task = make_task(kind, tmp_path)
    path = save(task, tmp_path / f"{kind}.ckpt")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["speechlab"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()  # plain values, tensors
    assert state["format"] == 1
    assert state["class_path"] == f"{type(task).__module__}.{type(task).__name__}"
    assert set(state) - {"format", "class_path", "embedded_files"} == STATE_KEYS[kind]
    assert state["embedded_files"] == (["lm_checkpoint"] if kind == "seq2seq" else [])
    assert not any(k.startswith("speechlab_") for k in saved)
    if kind == "gram_ctc":
        assert saved["hyper_parameters"]["grams"] is None  # the set is in the checkpoint
        (tmp_path / "grams.json").unlink()
    if kind == "seq2seq":
        (tmp_path / "lm.ckpt").unlink()  # the embedded LM is enough

    loaded = load(path)
    same_task(task, loaded)
    assert not loaded.training
    # the caller's class or a base of it: the checkpoint's class all the same
    base = {"rnnlm": RNNLMTask, "tcnlm": TopicLMTask, "seq2seq": Seq2SeqTask}.get(kind, CTCTask)
    same_task(task, base.load(path))


def test_a_ctc_model_is_a_unigram_gram_ctc_model(tmp_path):
    """``as_gram_ctc``: the CTC -> unigram Gram-CTC conversion gives the CTC model's outputs."""
    ctc = CTCTask.load(save(make_task("ctc", tmp_path), tmp_path / "ctc.ckpt"))
    gram = as_gram_ctc(ctc)
    assert isinstance(gram, GramCTCTask) and gram.grams == GramSet.unigrams(ctc.vocab)
    features, lengths = torch.randn(2, 40, 80), torch.tensor([40, 31])
    with torch.no_grad():
        torch.testing.assert_close(gram(features, lengths), ctc(features, lengths), rtol=0, atol=0)
    assert as_gram_ctc(gram) is gram


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_of_the_earlier_layout_loads(kind, tmp_path):
    """The new checkpoint moved back to the top-level ``speechlab_*`` keys (and without the
    class record, as earlier versions wrote it) loads through ``load`` with the task's class and
    through Lightning's ``load_from_checkpoint``; ``checkpoint_state`` translates it to the new
    entries."""
    task = make_task(kind, tmp_path)
    new = torch.load(save(task, tmp_path / "new.ckpt"), map_location="cpu", weights_only=False)
    old = to_old_layout(new)
    assert "speechlab" not in old and any(k.startswith("speechlab_") for k in old)
    torch.save(old, tmp_path / "old.ckpt")
    for gone in ("grams.json", "lm.ckpt"):  # the GramSet and the LM travel in the checkpoint
        (tmp_path / gone).unlink(missing_ok=True)
    translated = checkpoint_state(old, "old.ckpt")
    assert translated == {k: v for k, v in new["speechlab"].items() if k != "class_path"}

    cls = type(task)
    with pytest.raises(CheckpointError, match="no task class recorded"):
        load(tmp_path / "old.ckpt")  # nothing names the class: the caller must
    same_task(task, cls.load(tmp_path / "old.ckpt"))
    embedded = {"lm_checkpoint": str(tmp_path / "old.ckpt")} if kind == "seq2seq" else {}
    same_task(task, cls.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=False,
                                             **embedded).eval())


def test_earlier_lm_and_fused_checkpoints_give_their_lm(tmp_path):
    """``load_language_model`` reads the earlier layout of an RNNLMTask checkpoint
    (``speechlab_lm_config``) and of a fused seq2seq one (``speechlab_lm``)."""
    fused = make_task("seq2seq", tmp_path)
    for name, task in (("rnnlm", make_task("rnnlm", tmp_path)), ("seq2seq", fused)):
        new = torch.load(save(task, tmp_path / f"{name}.ckpt"), weights_only=False)
        torch.save(to_old_layout(new), tmp_path / f"{name}_old.ckpt")
        lm, config, vocab = load_language_model(tmp_path / f"{name}_old.ckpt", CharVocab())
        expected = task.lm.state_dict()
        assert vocab == CharVocab() and config["hidden_size"] == 16 and not lm.training
        assert all(torch.equal(v, expected[k]) for k, v in lm.state_dict().items())
    with pytest.raises(LMCheckpointError, match=r"ctc\.ckpt: not an RNNLMTask checkpoint"):
        load_language_model(save(make_task("ctc", tmp_path), tmp_path / "ctc.ckpt"))


def test_the_cli_reads_the_embedded_files_of_either_layout(tmp_path):
    """``speechlab test --ckpt_path C``: an init arg C embeds names C, from the new
    ``checkpoint["speechlab"]["embedded_files"]`` and the earlier ``speechlab_embedded_files``."""
    from speechlab.cli.lightning import with_checkpoint_config

    hp = {"_class_path": "speechlab.tasks.seq2seq.Seq2SeqTask", "fusion": "cold",
          "lm_checkpoint": "/gone/lm.ckpt"}
    layouts = {"new": {"speechlab": {"format": 1, "embedded_files": ["lm_checkpoint"]}},
               "old": {"speechlab_embedded_files": ["lm_checkpoint"], "speechlab_vocab": {}}}
    for name, keys in layouts.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": hp, **keys}, path)
        argv = with_checkpoint_config(["test", "--ckpt_path", str(path)])
        model = yaml.safe_load(argv[1].removeprefix("--model="))
        assert model["init_args"]["lm_checkpoint"] == str(path.resolve()), name


def test_class_from_lightning_cli_then_the_task_record_then_the_caller(tmp_path):
    """LightningCLI's ``_class_path`` names the class first; ``CTCTask.load`` of a robust
    checkpoint is a RobustASRTask; a class that is not the caller's is one line."""
    robust = make_task("robust", tmp_path)
    ckpt = torch.load(save(robust, tmp_path / "robust.ckpt"), weights_only=False)
    ckpt["speechlab"]["class_path"] = "speechlab.tasks.ctc.CTCTask"  # LightningCLI's wins
    ckpt["hyper_parameters"]["_class_path"] = "speechlab.tasks.robust.RobustASRTask"
    torch.save(ckpt, tmp_path / "cli.ckpt")
    same_task(robust, CTCTask.load(tmp_path / "cli.ckpt"))
    with pytest.raises(CheckpointError) as err:
        RNNLMTask.load(tmp_path / "cli.ckpt")
    assert str(err.value) == (f"{tmp_path / 'cli.ckpt'}: a speechlab.tasks.robust.RobustASRTask "
                              "checkpoint, not a RNNLMTask (or a subclass of it)")
    ckpt["hyper_parameters"]["_class_path"] = "speechlab.tasks.nope.Nope"
    torch.save(ckpt, tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match=r"nope\.ckpt: its task class speechlab\.tasks\.nope\.Nope "
                       "cannot be imported"):
        load(tmp_path / "nope.ckpt")


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_a_checkpoint_that_is_neither_layout_is_one_line(tmp_path):
    """No speechlab state (another module's Lightning checkpoint, or speechlab's state taken
    out), a format this version does not read, a file that is no checkpoint, weights that do
    not fit: a :class:`CheckpointError` of one line naming the file."""
    ckpt = torch.load(save(make_task("ctc", tmp_path), tmp_path / "ctc.ckpt"), weights_only=False)
    neither = {k: v for k, v in ckpt.items() if k != "speechlab"}
    torch.save(neither, tmp_path / "neither.ckpt")
    for call in (lambda: load(tmp_path / "neither.ckpt"),
                 lambda: CTCTask.load(tmp_path / "neither.ckpt")):
        with pytest.raises(CheckpointError) as err:
            call()
        assert one_line(err).startswith(f"{tmp_path / 'neither.ckpt'}: no speechlab task state")
        assert "written by an older or unknown speechlab version" in str(err.value)
    with pytest.raises(CheckpointError, match="written by an older or unknown speechlab version"):
        CTCTask.load_from_checkpoint(tmp_path / "neither.ckpt", weights_only=False)

    torch.save({**ckpt, "speechlab": {**ckpt["speechlab"], "format": 2}}, tmp_path / "newer.ckpt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "newer.ckpt")
    assert "checkpoint format 2" in one_line(err) and "newer or unknown speechlab version" in str(err.value)

    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "junk.ckpt")
    assert one_line(err).startswith(f"{tmp_path / 'junk.ckpt'}: not a checkpoint (")
    with pytest.raises(CheckpointError, match=r"missing\.ckpt: no such checkpoint$"):
        load(tmp_path / "missing.ckpt")

    other = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"],
                                          "encoder": SpeechEncoderConfig(hidden_size=8)}}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "other.ckpt")
    assert one_line(err).startswith(f"{tmp_path / 'other.ckpt'}: its weights do not fit the "
                                    "CTCTask its hyper-parameters build (")


def test_the_commands_report_a_checkpoint_of_neither_layout_in_one_line(tmp_path, capsys,
                                                                        monkeypatch, tiny_corpus):
    """``speechlab decode`` and ``speechlab test --ckpt_path`` (Lightning's restore, through
    ``on_load_checkpoint``): exit status 2 and one line naming the file."""
    import dataclasses

    ckpt = torch.load(save(make_task("ctc", tmp_path), tmp_path / "ctc.ckpt"), weights_only=False)
    neither = tmp_path / "neither.ckpt"
    hp = {**ckpt["hyper_parameters"], "encoder": dataclasses.asdict(ENC),  # as LightningCLI's
          "_class_path": "speechlab.tasks.ctc.CTCTask"}
    torch.save({**{k: v for k, v in ckpt.items() if k != "speechlab"}, "hyper_parameters": hp},
               neither)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["decode", "--checkpoint", str(neither), "--manifest", str(tiny_corpus["test"]),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"speechlab decode: error: {neither}: no speechlab "
                                               "task state"), err
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "ctc.yaml"
    assert main(["test", "--config", str(recipe), "--ckpt_path", str(neither),
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 f"--model.init_args.output_dir={tmp_path / 'out'}",
                 f"--data.init_args.test_manifest={tiny_corpus['test']}",
                 "--data.init_args.num_workers=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"speechlab test: error: {neither}: no speechlab "
                                               "task state"), err
    assert not (tmp_path / "out" / "hyps.jsonl").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_the_base_task_sets_up_every_task_the_same_way(kind, tmp_path):
    """AdamW + warm-up/cosine over ``optimizer_parameters()`` (all parameters but the robust
    critic's, which has its own Adam), stepped per batch; the RNGState callback; ``overwrite``
    never saved."""
    task = make_task(kind, tmp_path)
    task.trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=100,
                              enable_progress_bar=False, enable_model_summary=False)
    config = task.configure_optimizers()
    if kind == "robust":
        (opt, critic_opt), (sched,) = config
        assert {id(p) for p in critic_opt.param_groups[0]["params"]} == {
            id(p) for p in task.critic.parameters()}
    else:
        opt, sched = config["optimizer"], config["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and sched["interval"] == "step"
    expected = [p for n, p in task.named_parameters() if not n.startswith("critic.")]
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in expected]
    assert opt.param_groups[0]["lr"] == pytest.approx(task.hparams.lr / task.hparams.warmup_steps)
    assert [type(c) for c in task.configure_callbacks()] == [RNGState]
    task.hparams.overwrite = True
    path = tmp_path / "saved.ckpt"
    save(task, path)
    assert "overwrite" not in torch.load(path, weights_only=False)["hyper_parameters"]
