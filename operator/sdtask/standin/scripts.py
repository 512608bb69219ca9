"""The scripts the stand-in's txt2img/img2img runners hold, and the real server's checks against them.

AUTOMATIC1111 v1.10 `modules/api/api.py`: every key of `alwayson_scripts` is looked up with `script_name_to_index`
(case-insensitive match of `script.title()` over all of the runner's scripts), else 422 "Script '<key>' not found";
a selectable script there is 422 "Cannot have a selectable script in the always on scripts params"; `script_name`
is matched the same way among the selectable scripts. `/sdapi/v1/scripts` lists `script.name` (the title,
lowercased by `ScriptRunner.initialize_scripts`) per runner; `/sdapi/v1/script-info` one `ScriptInfo` per script.

The list is a v1.10 install's built-in scripts (`modules/processing_scripts/`, `scripts/`, `extensions-builtin/`)
plus the one extension the stand-in plays, sd-webui-animatediff ("AnimateDiff"). ControlNet is not installed here:
a request naming it fails as it would on a Web UI image without that extension. Selectable scripts are accepted
but not run: the stand-in generates as without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtask.standin.errors import ApiError, webui_error


@dataclass(frozen=True)
class Script:
    title: str
    alwayson: bool
    txt2img: bool = True
    img2img: bool = True

    @property
    def name(self) -> str:
        return self.title.lower()


SCRIPTS = (
    # modules/processing_scripts/*.py
    Script("Refiner", alwayson=True),
    Script("Seed", alwayson=True),
    Script("Sampler", alwayson=True),
    Script("Comments", alwayson=True),
    # extensions-builtin/*/scripts/*.py
    Script("Extra options", alwayson=True),
    Script("Hypertile", alwayson=True),
    Script("Soft Inpainting", alwayson=True, txt2img=False),
    # sd-webui-animatediff
    Script("AnimateDiff", alwayson=True),
    # scripts/*.py (selectable)
    Script("Prompt matrix", alwayson=False),
    Script("Prompts from file or textbox", alwayson=False),
    Script("X/Y/Z plot", alwayson=False),
    Script("img2img alternative test", alwayson=False, txt2img=False),
    Script("Loopback", alwayson=False, txt2img=False),
    Script("Outpainting mk2", alwayson=False, txt2img=False),
    Script("Poor man's outpainting", alwayson=False, txt2img=False),
    Script("SD upscale", alwayson=False, txt2img=False),
)


def runner(endpoint: str) -> list[Script]:
    """scripts.scripts_txt2img / scripts_img2img."""
    return [script for script in SCRIPTS if (script.img2img if endpoint == "img2img" else script.txt2img)]


def _script_not_found(name: str) -> ApiError:
    return webui_error(422, "HTTPException", f"422: Script '{name}' not found", detail=f"Script '{name}' not found")


def find_script(name: str, scripts: list[Script]) -> Script:
    """script_name_to_index: the first script whose title matches case-insensitively."""
    found = next((script for script in scripts if script.title.lower() == name.lower()), None)
    if found is None:
        raise _script_not_found(name)
    return found


def check_scripts(endpoint: str, body: dict[str, Any]) -> None:
    """get_selectable_script and init_script_args: refuse names the runner does not hold."""
    scripts = runner(endpoint)
    script_name = body.get("script_name")
    if isinstance(script_name, str) and script_name:
        find_script(script_name, [script for script in scripts if not script.alwayson])
    for name in body.get("alwayson_scripts") or {}:
        if not find_script(name, scripts).alwayson:
            detail = "Cannot have a selectable script in the always on scripts params"
            raise webui_error(422, "HTTPException", f"422: {detail}", detail=detail)


def scripts_list() -> dict[str, list[str]]:
    """GET /sdapi/v1/scripts (models.ScriptsList)."""
    return {"txt2img": [s.name for s in runner("txt2img")], "img2img": [s.name for s in runner("img2img")]}


def script_info() -> list[dict[str, Any]]:
    """GET /sdapi/v1/script-info (models.ScriptInfo); the stand-in does not describe the scripts' UI arguments."""
    return [
        {"name": script.name, "is_alwayson": script.alwayson, "is_img2img": endpoint == "img2img", "args": []}
        for endpoint in ("txt2img", "img2img")
        for script in runner(endpoint)
    ]
