"""CREMA-D folders and CSV manifests as explicit lists of labelled clips."""

import shutil
import warnings
from pathlib import Path

import pytest

from serkeras.corpus import (
    CREMA_D_LABELS,
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    SkippedFilesWarning,
    check_trainable,
    load_corpus,
    load_crema_d,
    load_manifest,
    parse_crema_d_name,
    resolve_data_dir,
)
from serkeras.errors import DataError

from conftest import CODE_TO_LABEL


def _skip_warnings(record):
    return [w for w in record if issubclass(w.category, SkippedFilesWarning)]


def test_real_subset_labels_actors_and_sexes(real_clips):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFilesWarning)  # nothing here may be skipped
        corpus = load_crema_d(real_clips.folder)
    assert corpus.name == "crema-d"
    assert corpus.labels == CREMA_D_LABELS
    assert len(corpus) == 12  # VideoDemographics.csv is not a clip
    expected = {row["file"]: row for row in real_clips.rows}
    assert [Path(c.path).name for c in corpus.clips] == sorted(expected)
    for clip in corpus.clips:
        row = expected[Path(clip.path).name]
        assert clip.label == CODE_TO_LABEL[row["emotion"]]
        assert (clip.speaker, clip.sentence, clip.level, clip.sex) == (
            row["actor"], row["sentence"], row["intensity"], row["sex"])
        assert clip.name == Path(row["file"]).stem
        assert Path(clip.path).is_file()
    assert {c.label for c in corpus.clips} == set(CREMA_D_LABELS)
    assert {c.sex for c in corpus.clips} == {"Female", "Male"}
    assert {c.level for c in corpus.clips} >= {"XX", "HI", "MD", "LO"}
    assert corpus.label_indices() == [CREMA_D_LABELS.index(c.label) for c in corpus.clips]
    assert corpus.label_indices(corpus.clips[:2]) == corpus.label_indices()[:2]


def test_full_shared_folder_lists_every_clip(crema_dir, crema_manifest):
    corpus = load_crema_d(crema_dir)
    assert len(corpus) == len(crema_manifest)
    assert len({c.speaker for c in corpus.clips}) == 73
    for clip in corpus.clips[::97]:
        row = crema_manifest[Path(clip.path).name]
        assert (clip.speaker, clip.sex, CREMA_D_LABELS.index(clip.label)) == (
            row["actor"], row["sex"], ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD").index(row["emotion"]))


def test_audiowav_subfolder_is_found(real_clips, tmp_path):
    root = tmp_path / "Crema"
    audio = root / "AudioWAV"
    audio.mkdir(parents=True)
    for path in real_clips.paths:
        shutil.copyfile(path, audio / path.name)
    # As released: the demographics table sits next to AudioWAV/, and a stray file at the top is ignored.
    shutil.copyfile(real_clips.folder / "VideoDemographics.csv", root / "VideoDemographics.csv")
    (root / "README.txt").write_text("CREMA-D")
    corpus = load_crema_d(root)
    assert len(corpus) == 12
    assert all(Path(c.path).parent == audio for c in corpus.clips)
    assert {c.sex for c in corpus.clips} == {"Female", "Male"}


def test_no_demographics_means_unknown_sex(real_clips):
    (real_clips.folder / "VideoDemographics.csv").unlink()
    corpus = load_crema_d(real_clips.folder)
    assert len(corpus) == 12 and {c.sex for c in corpus.clips} == {""}


def test_bad_names_and_empty_files_give_one_warning_with_a_count(real_clips):
    folder = real_clips.folder
    (folder / "notes.wav").write_bytes(b"RIFF....")  # name does not parse
    (folder / "1001_DFA_XYZ_XX.wav").write_bytes(b"RIFF....")  # unknown emotion code
    (folder / "1001_DFA_ANG_X.wav").write_bytes(b"RIFF....")  # the original release's one misnamed file
    (folder / "1001_DFA_ANG_XX.wav").write_bytes(b"")  # empty
    (folder / ".hidden_1001_DFA_ANG_XX.wav").write_bytes(b"x")  # hidden: ignored silently
    (folder / "list.txt").write_text("not audio")  # never audio: ignored silently
    (folder / "sub").mkdir()  # folders are not clips
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        corpus = load_crema_d(folder)
    assert len(corpus) == 12
    skipped = _skip_warnings(record)
    assert len(skipped) == 1
    message = str(skipped[0].message)
    assert message.startswith("skipped 4 files")
    for name in ("notes.wav", "1001_DFA_XYZ_XX.wav", "1001_DFA_ANG_X.wav", "1001_DFA_ANG_XX.wav: empty file"):
        assert name in message
    assert "hidden" not in message and "list.txt" not in message


def test_broken_links_and_a_clips_other_formats_are_listed_among_the_skipped(real_clips):
    """A symbolic link to nothing is reported, not dropped; the same clip in two formats (`x.ogg` beside
    `x.wav`) is one clip, so it cannot be counted twice or land in both training and test."""
    import soundfile as sf

    folder = real_clips.folder
    (folder / "1009_DFA_SAD_XX.ogg").symlink_to(folder / "moved-away.ogg")
    original = sorted(real_clips.paths)[0]
    wave, rate = sf.read(original)
    sf.write(original.with_suffix(".wav"), wave, rate)
    sf.write(original.with_suffix(".flac"), wave, rate)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        corpus = load_crema_d(folder)
    kept, *others = sorted([original, original.with_suffix(".wav"), original.with_suffix(".flac")])
    assert len(corpus) == 12 and str(kept) in [c.path for c in corpus.clips]  # the first name is kept
    assert len({c.name for c in corpus.clips}) == 12
    skipped = _skip_warnings(record)
    assert len(skipped) == 1
    message = str(skipped[0].message)
    assert message.startswith("skipped 3 files: ")
    assert "1009_DFA_SAD_XX.ogg: broken symbolic link (its target does not exist)" in message
    for other in others:
        assert f"{other.name}: another format of {kept.name}" in message


def test_many_skips_are_summarised(tmp_path, make_audio):
    make_audio("1001_DFA_ANG_XX.wav", folder=tmp_path / "c", seconds=0.3)
    for i in range(25):
        (tmp_path / "c" / f"junk{i:02d}.wav").write_bytes(b"x")
    with pytest.warns(SkippedFilesWarning, match=r"^skipped 25 files: .*; and 5 more$"):
        assert len(load_crema_d(tmp_path / "c")) == 1


def test_missing_folder_says_how_to_get_crema_d(tmp_path):
    with pytest.raises(DataError) as info:
        load_crema_d(tmp_path / "nowhere")
    message = str(info.value)
    assert "does not exist" in message and "nowhere" in message
    assert "CREMA-D" in message and "--data-dir" in message and DATA_DIR_ENV in message
    assert "\n" not in message


def test_folder_without_clips_says_how_to_get_crema_d(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    (tmp_path / "manifest.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"no CREMA-D clips in .*get CREMA-D from https://"):
        load_crema_d(tmp_path)


def test_folder_with_only_bad_files_warns_then_raises(tmp_path):
    (tmp_path / "1001_DFA_ANG_XX.wav").write_bytes(b"")
    with pytest.warns(SkippedFilesWarning, match="skipped 1 files"), pytest.raises(DataError, match="no CREMA-D clips"):
        load_crema_d(tmp_path)


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir() == Path(DEFAULT_DATA_DIR) == Path("data/Crema")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv(DATA_DIR_ENV, "")
    assert resolve_data_dir() == Path(DEFAULT_DATA_DIR)


def test_env_var_is_used_by_load_crema_d(monkeypatch, real_clips):
    monkeypatch.setenv(DATA_DIR_ENV, str(real_clips.folder))
    assert len(load_crema_d()) == 12
    assert len(load_corpus()) == 12


def test_default_folder_is_relative_to_the_working_directory(monkeypatch, real_clips, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    work = tmp_path / "project"
    shutil.copytree(real_clips.folder, work / DEFAULT_DATA_DIR)
    monkeypatch.chdir(work)
    assert len(load_crema_d()) == 12


def test_parse_crema_d_name():
    assert parse_crema_d_name("1003_DFA_ANG_XX") == ("1003", "DFA", "anger", "XX")
    assert parse_crema_d_name("1091_IEO_SAD_LO") == ("1091", "IEO", "sad", "LO")
    for bad in ("1003_DFA_ANG_X", "1003_DFA_XXX_XX", "103_DFA_ANG_XX", "1003_dfa_ANG_XX", "1003_DFA_ANG_XX_1", ""):
        assert parse_crema_d_name(bad) is None


def _write_manifest(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_relative_and_absolute_paths(tmp_path, make_audio):
    root = tmp_path / "corpus"
    a = make_audio("a.wav", folder=root / "clips", seconds=0.3)
    b = make_audio("b.flac", folder=root / "clips", seconds=0.3)
    c = make_audio("c.wav", folder=tmp_path / "elsewhere", seconds=0.3)
    manifest = _write_manifest(root / "mine.csv", (
        "path,label,speaker,sex\n"
        "clips/a.wav,calm,s1,F\n"
        "clips/b.flac, excited ,s2,M\n"
        f"{c},calm,s1,F\n"
    ))
    corpus = load_manifest(manifest)
    assert corpus.name == "mine"
    assert corpus.labels == ("calm", "excited")  # sorted: fixes class indices
    assert [Path(x.path) for x in corpus.clips] == [a, b, c]
    assert [x.label for x in corpus.clips] == ["calm", "excited", "calm"]
    assert [x.speaker for x in corpus.clips] == ["s1", "s2", "s1"]
    assert [x.sex for x in corpus.clips] == ["F", "M", "F"]
    assert corpus.label_indices() == [0, 1, 0]
    assert load_corpus(data_dir="ignored", manifest=manifest).clips == corpus.clips


def test_manifest_working_directory_does_not_matter(tmp_path, make_audio, monkeypatch):
    make_audio("a.wav", folder=tmp_path / "m" / "clips", seconds=0.3)
    manifest = _write_manifest(tmp_path / "m" / "list.csv", "path,label\nclips/a.wav,x\n")
    monkeypatch.chdir(tmp_path)
    corpus = load_manifest("m/list.csv")
    assert len(corpus) == 1 and Path(corpus.clips[0].path).is_file()
    assert corpus.clips[0].speaker == "" and corpus.clips[0].sex == ""
    assert manifest.is_file()


def test_manifest_missing_files_and_labels_are_skipped_with_one_warning(tmp_path, make_audio):
    make_audio("a.wav", folder=tmp_path / "clips", seconds=0.3)
    manifest = _write_manifest(tmp_path / "m.csv", (
        "path,label\n"
        "clips/a.wav,happy\n"
        "clips/gone.wav,sad\n"
        "clips/a.wav,\n"
    ))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        corpus = load_manifest(manifest)
    assert len(corpus) == 1 and corpus.labels == ("happy",)
    skipped = _skip_warnings(record)
    assert len(skipped) == 1
    message = str(skipped[0].message)
    assert message.startswith("skipped 2 manifest rows")
    assert "gone.wav: file not found" in message and "no label" in message


@pytest.mark.parametrize("text", ["file,emotion\na.wav,happy\n", "path\na.wav\n", ""])
def test_manifest_bad_header(tmp_path, text):
    with pytest.raises(DataError, match="header with columns path,label"):
        load_manifest(_write_manifest(tmp_path / "m.csv", text))


@pytest.mark.parametrize("text", ["path,label\n", "path,label,speaker\r\n"])
def test_manifest_with_only_a_header_says_it_has_no_rows(tmp_path, text):
    with pytest.raises(DataError, match="m.csv has no rows, only its header"):
        load_manifest(_write_manifest(tmp_path / "m.csv", text))


def test_a_corpus_of_one_label_cannot_train(tmp_path, make_audio):
    for name in ("a.wav", "b.wav", "c.wav"):
        make_audio(name, folder=tmp_path, seconds=0.3)
    one = load_manifest(_write_manifest(tmp_path / "m.csv", "path,label\na.wav,joy\nb.wav,joy\nc.wav,joy\n"))
    with pytest.raises(DataError, match="one label only \\('joy'\\): training needs at least two labels"):
        check_trainable(one)
    check_trainable(load_manifest(_write_manifest(tmp_path / "m.csv", "path,label\na.wav,joy\nb.wav,awe\n")))


def test_manifest_missing_or_useless(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "none.csv")
    manifest = _write_manifest(tmp_path / "m.csv", "path,label\ngone.wav,happy\n")
    with pytest.warns(SkippedFilesWarning), pytest.raises(DataError, match="no usable clips"):
        load_manifest(manifest)


def test_manifest_with_utf8_bom(tmp_path, make_audio):
    make_audio("a.wav", folder=tmp_path, seconds=0.3)
    (tmp_path / "m.csv").write_bytes("path,label\na.wav,joy\n".encode("utf-8-sig"))
    assert load_manifest(tmp_path / "m.csv").labels == ("joy",)
