"""A task content with links in every place the agent must find them (shared by test_links and test_fetcher)."""

from __future__ import annotations

import base64
from typing import Any


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def content_with_links() -> dict[str, Any]:
    return {
        "prompt": "https://example.com/prompt-that-is-a-url.png",
        "negative_prompt": "http is great",
        "init_images": ["https://example.com/cat.png", "aGVsbG8="],
        "mask": "s3://bucket/mask.png",
        "alwayson_scripts": {
            "controlnet": {
                "args": [
                    {"enabled": True, "image": {"image": "https://example.com/pose.png", "mask": None}},
                    {"input_image": "https://example.com/cat.png", "ad_prompt": "https://example.com/p.png"},
                ]
            },
            "image_link": "https://example.com/legacy.png",
        },
        "imageList": [{"data": "https://example.com/a.png", "name": "a"}],
        "steps": 20,
    }
