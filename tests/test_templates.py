from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.genai import types

from gsvr_batch.cli import cli
from gsvr_batch.errors import TemplateError, UsageError
from gsvr_batch.templates import (
    PLACEHOLDER_RE,
    check_params,
    generation_config,
    get_template,
    ignored_model_config_keys,
    load_template_file,
    load_templates,
    render_prompt,
)

FIXTURES = Path(__file__).parent / "fixtures" / "gs_videoreport"
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
META = {"title": "Photosynthesis: light reactions", "duration": 754.4, "source": "/videos/bio01.mp4"}
BUILTINS = ("comprehensive_lesson", "summary_report", "chinese_transcript")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- built-ins


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_renders_with_defaults_and_metadata(name: str) -> None:
    t = load_templates()[name]
    assert t.builtin and t.version and t.description
    out = render_prompt(t, {}, META, now=NOW)
    assert not PLACEHOLDER_RE.search(out)
    assert "Photosynthesis: light reactions" in out
    assert "12:34" in out  # duration as MM:SS
    # The prompt asks for Markdown with explicit headings (the sandbox echoes them).
    headings = re.findall(r"^(#{1,3}) (.+)$", out, flags=re.M)
    assert headings[0][0] == "#" and "Photosynthesis" in headings[0][1]
    assert len([h for h in headings if h[0] == "##"]) >= 4
    # The model settings are valid SDK config.
    cfg = types.GenerateContentConfig(**generation_config(t))
    assert cfg.max_output_tokens and cfg.temperature is not None


def test_builtin_sections_match_brief() -> None:
    ts = load_templates()
    lesson = render_prompt(ts["comprehensive_lesson"], {}, META, now=NOW)
    for h in ("## Overview", "## Learning Objectives", "## Lesson Structure", "## Key Concepts",
              "## Activities", "## Assessment"):
        assert h in lesson
    assert "university students" in lesson  # audience default
    summary = render_prompt(ts["summary_report"], {}, META, now=NOW)
    for h in ("## Topic", "## Key Points", "## Top Timestamps", "## Conclusion"):
        assert h in summary
    zh = render_prompt(ts["chinese_transcript"], {}, META, now=NOW)
    for h in ("## 逐字稿", "## 画面补充", "## 关键术语", "## 学习要点", "## 重要时间节点"):
        assert h in zh
    assert "### [00:00] 讲者" in zh and "简体中文" in zh


def test_params_override_metadata_and_defaults() -> None:
    t = load_templates()["comprehensive_lesson"]
    out = render_prompt(
        t, {"audience": "year 9 pupils", "video_title": "Custom title", "language": "German"}, META, now=NOW
    )
    assert "year 9 pupils" in out and "university students" not in out
    assert "# Custom title — Lesson Plan" in out  # manifest params beat metadata
    assert "Write in German" in out


def test_unknown_duration_falls_back_to_default() -> None:
    t = load_templates()["summary_report"]
    out = render_prompt(t, {}, {"title": "X", "duration": None}, now=NOW)
    assert "(length: unknown)" in out


def test_unknown_param_error_names_template_and_param() -> None:
    t = load_templates()["comprehensive_lesson"]
    problems = check_params(t, {"audiance": "adults"})
    assert len(problems) == 1
    assert "comprehensive_lesson" in problems[0] and "'audiance'" in problems[0]
    assert "did you mean 'audience'" in problems[0]
    with pytest.raises(TemplateError, match=r"comprehensive_lesson.*unknown parameter 'audiance'"):
        render_prompt(t, {"audiance": "adults"}, META)


def test_choices_checked() -> None:
    t = load_templates()["comprehensive_lesson"]
    assert check_params(t, {"detail_level": "brief"}) == []
    [problem] = check_params(t, {"detail_level": "extreme"})
    assert "detail_level" in problem and "brief, standard, comprehensive" in problem


def test_missing_required_param(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", """
templates:
  quiz:
    version: "1"
    description: quiz
    parameters:
      - name: course_code
        required: true
        description: the course's code
      - name: video_title
        required: true
    prompt: "Quiz for {{course_code}} on {{video_title}}"
""")
    t = load_templates([tmp_path])["quiz"]
    # video_title is metadata, so it counts as given; course_code does not.
    [problem] = check_params(t, {})
    assert "template 'quiz'" in problem and "missing required parameter 'course_code'" in problem
    with pytest.raises(TemplateError, match="course_code"):
        render_prompt(t, {}, META)
    assert render_prompt(t, {"course_code": "BIO101"}, META) == "Quiz for BIO101 on Photosynthesis: light reactions"


def test_leftover_placeholder_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", """
templates:
  needs_value:
    version: "1"
    description: d
    parameters: [topic]
    prompt: "About {{ topic }} and {{undeclared}}."
""")
    t = load_templates([tmp_path])["needs_value"]
    with pytest.raises(TemplateError) as exc:
        render_prompt(t, {}, META)
    msg = str(exc.value)
    assert "needs_value" in msg and "'topic'" in msg and "'undeclared'" in msg
    # Names used in the prompt are known, so giving them is not an "unknown parameter".
    assert render_prompt(t, {"topic": "cells", "undeclared": "x"}, META) == "About cells and x."


def test_values_are_not_expanded_twice(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", 'templates: {t: {prompt: "A {{x}} B", parameters: [x]}}\n')
    t = load_templates([tmp_path])["t"]
    assert render_prompt(t, {"x": "{{video_title}}"}, META) == "A {{video_title}} B"
    assert render_prompt(t, {"x": ["a", "b"]}, META) == "A a, b B"


# ---------------------------------------------------------------- gs_videoReport files


def test_old_gs_videoreport_file_loads_unchanged() -> None:
    ts = load_templates([FIXTURES])
    lesson = ts["comprehensive_lesson"]
    assert not lesson.builtin and lesson.source.startswith(str(FIXTURES / "default_templates.yaml"))
    assert [p.name for p in lesson.parameters] == ["video_duration", "subject_area", "detail_level"]
    assert all(not p.required for p in lesson.parameters)
    assert lesson.model_config == {"temperature": 0.7, "max_tokens": 8192}
    zh = ts["chinese_transcript"]
    assert zh.version == "2.0" and zh.description.startswith("生成中文逐字稿")
    assert generation_config(zh) == {"temperature": 1.0, "max_output_tokens": 65536, "top_p": 0.95}
    assert ignored_model_config_keys(zh) == ["response_format"]
    # Built-ins the old file doesn't redefine are still there.
    assert set(BUILTINS) <= set(ts)


def test_old_gs_videoreport_templates_render() -> None:
    ts = load_templates([FIXTURES])
    # gs_videoReport's renderer defaults (subject_area general, detail_level comprehensive ...).
    out = render_prompt(ts["comprehensive_lesson"], {}, META, now=NOW)
    assert "in the general field (duration: 12:34 minutes)" in out
    assert "with comprehensive level of detail" in out
    out = render_prompt(ts["summary_report"], {"max_length": 200}, META, now=NOW)
    assert "concise 200-word summary" in out and "key concepts and learning points" in out
    out = render_prompt(ts["chinese_transcript"], {"detail_level": None}, {"title": "光合作用", "duration": 65}, now=NOW)
    assert "# 光合作用 - 完整中文逐字稿" in out and "**视频时长**：01:05" in out
    assert "**分析时间**：2026-03-01 09:30 UTC" in out  # {{current_timestamp}} was never declared
    assert not PLACEHOLDER_RE.search(out)
    out = render_prompt(ts["chinese_transcript"], {"language_preference": "英文优先"}, META, now=NOW)
    assert "Photosynthesis" in out


def test_old_v1_file_and_single_template_form(tmp_path: Path) -> None:
    [v1] = load_template_file(FIXTURES / "v1" / "default_templates.yaml")
    assert v1.name == "chinese_transcript" and v1.version == "1.0"
    assert generation_config(v1) == {"temperature": 0.3, "max_output_tokens": 8192}
    assert "# T - 中文逐字稿分析" in render_prompt(v1, {}, {"title": "T", "duration": 10}, now=NOW)

    [lab] = load_template_file(FIXTURES / "single_template.yaml")
    assert lab.name == "lab_walkthrough" and lab.version == "1.1"
    assert lab.extra == {"author": "A. Teacher", "tags": ["lab", "chemistry"], "output_format": "markdown"}
    assert [(p.name, p.required) for p in lab.parameters] == [
        ("subject_area", False), ("safety_level", False), ("course_code", True)]
    assert lab.param("safety_level").choices == ["standard", "strict"]
    out = render_prompt(lab, {"course_code": "CHEM2"}, META)
    assert out.startswith("For course CHEM2 (general), write a lab walkthrough of \"Photosynthesis")
    assert "with standard safety notes" in out


def test_parameter_shorthands(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", """
templates:
  a:
    parameters:
      - level: beginner
      - name: n
    prompt: "{{level}} {{n}}"
  b:
    parameters: {level: expert, n: {default: 3, required: false}}
    prompt: "{{level}} {{n}}"
""")
    ts = load_templates([tmp_path])
    assert render_prompt(ts["a"], {"n": 1}, {}) == "beginner 1"
    assert render_prompt(ts["b"], {}, {}) == "expert 3"


# ---------------------------------------------------------------- folders and errors


def test_user_dir_overrides_builtin_and_later_dir_wins(tmp_path: Path) -> None:
    body = 'templates:\n  summary_report:\n    version: "{v}"\n    description: mine\n    prompt: "Mine {v}"\n'
    write(tmp_path / "a" / "s.yaml", body.format(v="a"))
    write(tmp_path / "b" / "s.yml", body.format(v="b"))
    assert load_templates([tmp_path / "a"])["summary_report"].prompt == "Mine a"
    t = load_templates([tmp_path / "a", tmp_path / "b"])["summary_report"]
    assert t.prompt == "Mine b" and t.version == "b" and not t.builtin
    assert load_templates()["summary_report"].builtin  # built-in untouched without the folder


def test_duplicate_name_in_one_folder_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "1.yaml", 'templates: {x: {prompt: "one"}}\n')
    write(tmp_path / "2.yaml", 'templates: {x: {prompt: "two"}}\n')
    with pytest.raises(TemplateError, match=r"2\.yaml.*'x' is also defined at .*1\.yaml"):
        load_templates([tmp_path])


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "broken.yaml", "templates:\n  x:\n    prompt: \"unclosed\n    version: 1\n")
    with pytest.raises(TemplateError) as exc:
        load_templates([tmp_path])
    assert str(bad) in str(exc.value)
    assert re.search(r"broken\.yaml:\d+: invalid YAML", str(exc.value))
    assert isinstance(exc.value, UsageError)


def test_structural_errors_name_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "t.yaml", "templates:\n  ok:\n    prompt: hi\n  noprompt:\n    version: '1'\n")
    with pytest.raises(TemplateError, match=rf"{re.escape(str(f))}:5: template 'noprompt' has no 'prompt:'"):
        load_templates([tmp_path])
    f.write_text("templates:\n  t:\n    prompt: hi\n    model_config:\n      media_resolution: ultra\n")
    with pytest.raises(TemplateError, match=r"t\.yaml:5: .*media_resolution must be low, medium or high"):
        load_templates([tmp_path])
    f.write_text("templates:\n  t:\n    prompt: hi\n    parameters:\n      - name: a\n      - 42\n")
    with pytest.raises(TemplateError, match=r"t\.yaml:6: .*must be a name or a mapping"):
        load_templates([tmp_path])
    f.write_text("just: a mapping\n")
    with pytest.raises(TemplateError, match="not a template file"):
        load_templates([tmp_path])


def test_missing_folder_and_unknown_template(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="templates folder not found"):
        load_templates([tmp_path / "nope"])
    with pytest.raises(TemplateError, match=r"unknown template 'sumary_report' \(did you mean 'summary_report'\?\)"):
        get_template("sumary_report")


# ---------------------------------------------------------------- model settings


def test_generation_config_mapping(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", """
templates:
  t:
    prompt: hi
    model_config:
      temperature: 0.2
      max_output_tokens: 1000
      top_p: 0.9
      top_k: 40
      seed: 7
      media_resolution: Low
      response_format: structured
      model: gemini-9
      thinking: lots
""")
    t = load_templates([tmp_path])["t"]
    cfg = generation_config(t)
    assert cfg == {"temperature": 0.2, "max_output_tokens": 1000, "top_p": 0.9, "top_k": 40.0, "seed": 7,
                   "media_resolution": "MEDIA_RESOLUTION_LOW"}
    sdk = types.GenerateContentConfig(**cfg)
    assert sdk.media_resolution == types.MediaResolution.MEDIA_RESOLUTION_LOW
    assert ignored_model_config_keys(t) == ["response_format", "model", "thinking"]


def test_generation_config_rejects_bad_numbers(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", "templates:\n  t:\n    prompt: hi\n    model_config:\n      temperature: hot\n")
    with pytest.raises(TemplateError, match=r"t\.yaml:5: template 't': model_config temperature must be a number"):
        load_templates([tmp_path])


# ---------------------------------------------------------------- CLI


def test_cli_templates_table_and_json(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "single_template.yaml", tmp_path / "lab.yaml")
    runner = CliRunner()
    res = runner.invoke(cli, ["templates", "--templates", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name in (*BUILTINS, "lab_walkthrough"):
        assert name in res.output
    assert "audience" in res.output and "default: 'university students'" in res.output
    assert "course_code" in res.output and "required" in res.output
    assert "built-in" in res.output and str(tmp_path / "lab.yaml") in res.output

    res = runner.invoke(cli, ["templates", "--json", "--templates", str(tmp_path)])
    assert res.exit_code == 0
    data = {d["name"]: d for d in json.loads(res.output)}
    assert data["comprehensive_lesson"]["builtin"] is True
    lab = data["lab_walkthrough"]
    assert {"name": "course_code", "required": True, "default": None, "description": "", "choices": None} in lab["parameters"]


def test_cli_templates_broken_file_exit_code(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", "templates: [\n")
    res = CliRunner().invoke(cli, ["templates", "--templates", str(tmp_path)])
    assert res.exit_code == 2
    assert "bad.yaml" in res.output and "Traceback" not in res.output
