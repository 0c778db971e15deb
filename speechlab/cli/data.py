"""``speechlab data synth|farfield|validate|prepare``: the data tools' arguments and entry points
over :mod:`speechlab.data.synth`, :mod:`speechlab.data.farfield`, :mod:`speechlab.data.manifests`
and :mod:`speechlab.data.prepare`; the last two load lhotse (and with it torch) only when
``validate`` or ``prepare`` runs."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from speechlab.data import prepare as corpus_prep
from speechlab.data.farfield import (
    NOISE_TYPES,
    FarfieldConfig,
    RoomSpec,
    farfield_corpus,
    list_audio,
)
from speechlab.data.sentences import available_domains, generate_sentences
from speechlab.data.synth import (
    DEFAULT_VARIANTS,
    DEFAULT_VOICES,
    SPLITS,
    find_espeak,
    read_sentences,
    synthesize_corpus,
)
from speechlab.data.text import CharVocab
from speechlab.errors import CLIError

log = logging.getLogger("speechlab.data.synth")  # the name its messages had before the move


# ---------------------------------------------------------------------------------- synth

def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--utterances", type=int, default=None,
        help="number of utterances (default 1800; with --text, one per line; more than the "
        "file's lines cycles through them with new voices)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--text", type=Path, default=None,
                        help="text file, one sentence per line, instead of the generator")
    parser.add_argument("--domains", nargs="+", default=list(available_domains()),
                        choices=available_domains(),
                        help="generator domains, interleaved (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--sample-rate", type=int, default=16000, help="output rate in Hz")
    parser.add_argument("--voices", nargs="+", default=None,
                        help=f"espeak-ng voices (default: {' '.join(DEFAULT_VOICES)})")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"voice variants (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--speed-range", nargs=2, type=int,
                        default=[130, 190], metavar=("LO", "HI"),
                        help="espeak-ng speed in words per minute, inclusive (default 130 190)")
    parser.add_argument("--pitch-range", nargs=2, type=int,
                        default=[30, 70], metavar=("LO", "HI"),
                        help="espeak-ng pitch 0-99, inclusive (default 30 70)")
    parser.add_argument("--id-prefix", default="tts", help="utterance id prefix (default tts)")
    parser.add_argument("--splits", nargs="+", default=None, choices=SPLITS,
                        help="render and write only these splits of the corpus (default: all); "
                        "the same files as a full run, e.g. a test set to evaluate elsewhere")
    parser.add_argument("--force", action="store_true",
                        help="replace manifests in --out that list another corpus")


def synth(args: argparse.Namespace) -> int:
    """Synthesize a speech corpus with espeak-ng (the embedded default data set).

    Sentences come from speechlab's own generator (``speechlab.data.sentences``: home-automation
    commands and spoken numbers/dates) or from a text file (one sentence per line). Each utterance
    gets a voice, a voice variant, a speed (words per minute) and a pitch (0-99) drawn from a random
    generator seeded by (seed, utterance index), so any utterance is reproducible on its own and the
    output does not depend on --jobs. espeak-ng speaks at 22.05 kHz; the audio is resampled to
    --sample-rate and written as 16-bit PCM WAV under OUT/wavs/, with NeMo-style manifests
    OUT/train.jsonl, OUT/dev.jsonl and OUT/test.jsonl (paths relative to OUT).

    Re-running into the same folder resumes: a WAV that exists is finished (writes are atomic) and
    is kept. Manifests in the folder that list another corpus (other seed, sentences or voice
    settings) are an error, not replaced, unless --force. The same seed gives byte-identical files.
    A sentence text never occurs in two splits, so the dev and test sets measure generalization
    to unseen sentences.

    examples:
      speechlab data synth --out data/tiny --utterances 1800 --seed 0
      speechlab data synth --out data/books --text sentences.txt --utterances 500 --jobs 4
    """
    find_espeak()  # fail before reading anything
    if args.utterances is not None and args.utterances <= 0:
        raise CLIError(f"--utterances must be positive, got {args.utterances}")
    if args.text is not None:
        lines, skipped = read_sentences(args.text)
        if skipped:
            shown = ", ".join(map(str, skipped[:20])) + (" ..." if len(skipped) > 20 else "")
            log.warning("%s: skipped %d line(s) that normalize to empty text: line %s",
                        args.text, len(skipped), shown)
        if not lines:
            raise CLIError(f"{args.text}: no sentences (every line is empty after normalization)")
        n = len(lines) if args.utterances is None else args.utterances
        sentences = [lines[i % len(lines)] for i in range(n)]
    else:
        n = 1800 if args.utterances is None else args.utterances
        sentences = generate_sentences(n, args.seed, args.domains)
    synthesize_corpus(
        args.out, sentences, seed=args.seed, jobs=args.jobs, sample_rate=args.sample_rate,
        dev_fraction=args.dev_fraction, test_fraction=args.test_fraction, voices=args.voices,
        variants=args.variants, speed_range=tuple(args.speed_range),
        pitch_range=tuple(args.pitch_range), id_prefix=args.id_prefix, force=args.force,
        splits_wanted=args.splits,
    )
    return 0


# ------------------------------------------------------------------------------- farfield

def add_farfield_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="input", required=True, type=Path,
                        help="input manifest (NeMo-style JSONL)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--noise-dir", type=Path, default=None,
                        help="folder of noise recordings (searched recursively)")
    parser.add_argument("--noise-type", nargs="+", choices=NOISE_TYPES, default=None,
                        help="generated noise, one drawn per utterance (default: white pink "
                        "babble when there is no --noise-dir; with --noise-dir, the recordings "
                        "count as one more type, all equally likely)")
    parser.add_argument("--rir-dir", type=Path, default=None,
                        help="folder of real room impulse responses (default: simulate rooms)")
    snr = parser.add_mutually_exclusive_group()
    snr.add_argument("--snr-range", nargs=2, type=float, default=[0.0, 20.0], metavar=("LO", "HI"),
                     help="SNR in dB drawn uniformly per utterance (default 0 20)")
    snr.add_argument("--snr", type=float, default=None, help="fixed SNR in dB")
    parser.add_argument("--seed", type=int, default=0, help="random seed >= 0 (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help="output rate in Hz (default: the input's)")
    room = RoomSpec()
    parser.add_argument("--room-min", nargs=3, type=float, default=list(room.room_min),
                        metavar=("X", "Y", "Z"), help="smallest simulated room, metres")
    parser.add_argument("--room-max", nargs=3, type=float, default=list(room.room_max),
                        metavar=("X", "Y", "Z"), help="largest simulated room, metres")
    parser.add_argument("--rt60-range", nargs=2, type=float, default=list(room.rt60_range),
                        metavar=("LO", "HI"), help="simulated RT60 in seconds (default 0.2 0.8)")
    parser.add_argument("--distance-range", nargs=2, type=float,
                        default=list(room.distance_range), metavar=("LO", "HI"),
                        help="source-microphone distance in metres (default 0.5 4.0)")
    parser.add_argument("--max-order", type=int, default=room.max_order,
                        help="image-source reflection order cap (default 80; bounds the time "
                        "per simulated room)")
    parser.add_argument("--rooms", type=int, default=0,
                        help="simulate a bank of this many rooms and draw one per utterance "
                        "(default 0: a fresh room per utterance, about 0.1-0.5 s each)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite outputs in --out made with other settings")


def farfield(args: argparse.Namespace) -> int:
    """Far-field corruption: reverberate speech with a room impulse response and add noise.

    Reads a NeMo-style manifest and writes, for every utterance, a far-field copy: the clean audio
    convolved with a room impulse response (RIR) -- real files from --rir-dir, or rooms simulated
    with pyroomacoustics (random shoebox size, RT60 and source-microphone distance) -- plus noise at
    an SNR drawn uniformly from --snr-range (or fixed by --snr), measured against the reverberant
    speech. Noise is a random segment of a file from --noise-dir (looped if short), or generated
    (--noise-type white, pink, or babble = a sum of other utterances of the same manifest).

    The output has the clean length (the RIR is aligned on its direct path, so clean and noisy
    frames line up) and is attenuated only if it would clip (the factor is recorded as "gain").
    OUT/<input stem>.jsonl lists the noisy utterances: "id" = "<clean id>__farfield", "clean_id",
    "clean_audio_filepath", the clean text/speaker/duration, and "snr_db", "rir", "noise", "gain".

    Every random choice is seeded by (seed, clean id), so the output does not depend on --jobs or on
    the order of the manifest. Re-running into the same folder resumes: finished utterances (a WAV
    with its .json sidecar, both written atomically) are kept; outputs made with other settings are
    an error unless --force.

    examples:
      speechlab data farfield --in data/tiny/test.jsonl --out data/tiny_far --snr-range 0 20 --seed 0
      speechlab data farfield --in train.jsonl --out far --noise-dir ../shared/data/noise_rir/noise \\
          --rir-dir ../shared/data/noise_rir/rir --snr 5
    """
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    snr_range = (args.snr, args.snr) if args.snr is not None else tuple(args.snr_range)
    noise_files: tuple[str, ...] = ()
    if args.noise_dir is not None:
        noise_files = list_audio(args.noise_dir, "noise")
    noise_types = tuple(args.noise_type or (() if noise_files else NOISE_TYPES))
    rir_files = list_audio(args.rir_dir, "RIR") if args.rir_dir is not None else ()
    config = FarfieldConfig(
        seed=args.seed,
        snr_range=snr_range,
        noise_types=noise_types,
        noise_files=tuple(noise_files),
        noise_dir=os.path.abspath(args.noise_dir) if args.noise_dir else None,
        rir_files=tuple(rir_files),
        rir_dir=os.path.abspath(args.rir_dir) if args.rir_dir else None,
        room=RoomSpec(tuple(args.room_min), tuple(args.room_max), tuple(args.rt60_range),
                      tuple(args.distance_range), args.max_order, args.rooms),
        sample_rate=args.sample_rate,
    )
    farfield_corpus(args.input, args.out, config, jobs=args.jobs, force=args.force)
    return 0


# ------------------------------------------------------------------------------- validate

def _vocab_arg(value: str | None) -> CharVocab | None:
    if value is None:
        return None
    if value == "default":
        return CharVocab()
    if value.endswith(".json") and Path(value).is_file():
        return CharVocab.load(value)
    return CharVocab(list(dict.fromkeys(value)))


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``speechlab data validate``."""
    parser.add_argument(
        "--manifest", required=True, help="NeMo-style JSONL or lhotse cuts (.jsonl[.gz])"
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="expected sample rate (Hz)")
    parser.add_argument(
        "--resample",
        action="store_true",
        help="accept other sample rates (cuts resample on load) instead of failing",
    )
    parser.add_argument(
        "--frame-rate",
        type=float,
        default=None,
        help="model output frames per second; flags utterances too short for CTC",
    )
    parser.add_argument(
        "--vocab",
        default=None,
        help="characters of the vocabulary ('default' = a-z, space, apostrophe), "
        "or a CharVocab .json file",
    )
    parser.add_argument(
        "--max-duration-mismatch",
        type=float,
        default=0.1,
        help="seconds the manifest duration may differ from the audio",
    )
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="read audio headers only (faster; misses NaN/inf and corrupt data)",
    )


def validate(args: argparse.Namespace) -> int:
    """Validate a speech manifest (NeMo-style JSONL or lhotse cuts) and report every bad line.

    Prints the summary and each issue (``path:LINE: reason``); exit status 1 when there were issues
    or nothing is usable, 2 when the manifest cannot be checked at all (not found, malformed JSON,
    empty). The manifest format and the reason categories: ``pydoc speechlab.data.manifests``.

      speechlab data validate --manifest data/tiny/train.jsonl --frame-rate 25 --vocab default
    """
    from speechlab.data.manifests import ManifestError, load_cuts  # lhotse: only for validate

    data_logger = logging.getLogger("speechlab.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # the issues are printed below, not logged twice
    try:
        _, report = load_cuts(
            args.manifest,
            vocab=_vocab_arg(args.vocab),
            sample_rate=args.sample_rate,
            resample=args.resample,
            output_frame_rate=args.frame_rate,
            check_samples=not args.headers_only,
            max_duration_mismatch=args.max_duration_mismatch,
        )
    except ManifestError as e:
        if e.report is None:
            raise
        report = e.report
    finally:
        data_logger.setLevel(level)
    print(report.summary())
    for issue in report.issues:
        print(f"  {issue}")
    return 1 if report.issues or report.kept == 0 else 0


# -------------------------------------------------------------------------------- prepare

def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``speechlab data prepare``."""
    parser.add_argument(
        "corpus", metavar="CORPUS",
        help="; ".join(f"{name}: {what}" for name, what in corpus_prep.CORPORA.items()),
    )
    parser.add_argument("--corpus-dir", required=True, type=Path,
                        help="the downloaded, unpacked corpus (layouts below)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder for the manifests (OUT/<split>.jsonl)")
    parser.add_argument("--parts", nargs="+", default=None,
                        help="librispeech: parts (default: every part folder found); "
                        "commonvoice: TSV splits (default: train dev test; also validated, "
                        "invalidated, other); ljspeech, cmu_arctic: which of train dev test to "
                        "write (default: all)")
    parser.add_argument("--num-jobs", type=int, default=1,
                        help="parallel workers of lhotse's librispeech and commonvoice "
                        "preparers (default 1)")
    parser.add_argument("--language", default=None,
                        help="commonvoice: the language folder under --corpus-dir (default en; "
                        "not needed when --corpus-dir is the language folder)")
    parser.add_argument("--dev-fraction", type=float, default=None,
                        help=f"ljspeech, cmu_arctic: share of utterances in dev "
                        f"(default {corpus_prep.DEFAULT_DEV_FRACTION})")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help=f"ljspeech, cmu_arctic: share of utterances in test "
                        f"(default {corpus_prep.DEFAULT_TEST_FRACTION})")
    parser.add_argument("--seed", type=int, default=None,
                        help="ljspeech, cmu_arctic: seed of the split (default 0)")
    parser.add_argument("--vocab", default=None,
                        help="characters a transcript must be spelled in after normalization "
                        "(default a-z, space, apostrophe), or a CharVocab .json file")
    parser.add_argument("--force", action="store_true",
                        help="replace existing manifests in --out")


def prepare(args: argparse.Namespace) -> int:
    """Manifests of a downloaded corpus, from lhotse's recipe preparers.

    lhotse (lhotse.recipes.prepare_librispeech, prepare_ljspeech, prepare_commonvoice,
    prepare_cmu_arctic) reads the transcripts and the audio headers; speechlab writes one
    NeMo-style manifest per split, OUT/<split>.jsonl, with lines
    {"id", "audio_filepath" (absolute), "duration", "text", "speaker" (not for LJ Speech)},
    where "text" is the transcript normalized as in training and scoring
    (speechlab.data.text.normalize_text; LJ Speech: its normalized column). The audio stays
    where it is, at its own rate (LJ Speech 22.05 kHz, Common Voice 48 kHz MP3): set
    `resample: true` in a recipe's data section.

    Splits: librispeech, one manifest per part (dev-clean.jsonl, train-clean-100.jsonl, ...);
    commonvoice, one per TSV (train, dev, test; --parts validated ... for the others);
    ljspeech and cmu_arctic have no split of their own: train/dev/test by a hash of the text
    (--dev-fraction, --test-fraction, --seed), so that a text (an ARCTIC prompt that every
    speaker reads) is in one split only.

    A transcript that normalizes to empty text or has letters/digits outside the vocabulary
    ("1813") is skipped and logged (split, audio file, reason); so is one whose audio is
    missing. Each split ends with a line: utterances, hours, skipped by reason. Existing
    manifests are kept unless --force.

    layouts (--corpus-dir):
      librispeech  LibriSpeech/  PART/SPEAKER/CHAPTER/{SPEAKER-CHAPTER.trans.txt, *.flac}
      ljspeech     LJSpeech-1.1/ metadata.csv (ID|text|normalized text), wavs/ID.wav
      commonvoice  cv-corpus-*/  LANG/{train,dev,test,validated}.tsv, LANG/clips/*.mp3
                   (or the LANG folder itself)
      cmu_arctic   a folder of   cmu_us_SPEAKER_arctic/{wav/*.wav, etc/txt.done.data}

    examples:
      speechlab data prepare librispeech --corpus-dir /data/LibriSpeech --out data/librispeech \\
          --parts train-clean-100 dev-clean test-clean --num-jobs 8
      speechlab data prepare ljspeech --corpus-dir /data/LJSpeech-1.1 --out data/ljspeech
      speechlab data prepare commonvoice --corpus-dir /data/cv-corpus-13.0-2023-03-09 \\
          --language en --out data/cv_en --num-jobs 8
      speechlab data prepare cmu_arctic --corpus-dir /data/cmu_arctic --out data/arctic
    """
    if args.corpus not in corpus_prep.CORPORA:
        raise CLIError(f"unknown corpus {args.corpus!r} (known: {', '.join(corpus_prep.CORPORA)})")
    split_options = [name for name, value in (("--dev-fraction", args.dev_fraction),
                                              ("--test-fraction", args.test_fraction),
                                              ("--seed", args.seed)) if value is not None]
    if split_options and args.corpus not in corpus_prep.UNSPLIT_CORPORA:
        raise CLIError(f"{', '.join(split_options)}: only for ljspeech and cmu_arctic (corpora "
                       f"without a split of their own); {args.corpus} keeps its own parts")
    if args.language is not None and args.corpus != "commonvoice":
        raise CLIError(f"--language: only for commonvoice, not {args.corpus}")
    corpus_prep.prepare_corpus(
        args.corpus, args.corpus_dir, args.out, parts=args.parts, num_jobs=args.num_jobs,
        force=args.force, vocab=_vocab_arg(args.vocab),
        dev_fraction=(corpus_prep.DEFAULT_DEV_FRACTION if args.dev_fraction is None
                      else args.dev_fraction),
        test_fraction=(corpus_prep.DEFAULT_TEST_FRACTION if args.test_fraction is None
                       else args.test_fraction),
        seed=0 if args.seed is None else args.seed,
        language=args.language or "en",
    )
    return 0
