"""'Copy as cURL': a request as a curl command in the API documentation's style."""

from __future__ import annotations

import copy
import json
from typing import Any

from .upstream import API_VERSION, FileData

ELIDED = "…elided: tick “Include attachment data” (or add ?attachments=1) to include the base64 data…"


def resolve_attachments(body: dict[str, Any], include: bool) -> dict[str, Any]:
    """A copy of the body whose base64 image and document data is either read
    from the files or replaced by a note."""
    body = copy.deepcopy(body)
    for turn in body.get("messages", []):
        content = turn.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            source = block.get("source") if isinstance(block, dict) else None
            if isinstance(source, dict) and source.get("type") == "base64":
                data = source.get("data")
                if not include:
                    source["data"] = ELIDED
                elif isinstance(data, FileData):
                    source["data"] = data.read_base64()
    return body


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def curl_command(body: dict[str, Any], *, base_url: str, bearer: bool = False, include_attachments: bool = False) -> str:
    """The key is never included: it is read from the environment by the shell."""
    body = resolve_attachments(body, include_attachments)
    credential = (
        '--header "Authorization: Bearer $ANTHROPIC_AUTH_TOKEN"' if bearer else '--header "x-api-key: $ANTHROPIC_API_KEY"'
    )
    lines = [
        f"curl {base_url.rstrip('/')}/v1/messages",
        credential,
        f'--header "anthropic-version: {API_VERSION}"',
        '--header "content-type: application/json"',
        "--data",
    ]
    payload = json.dumps(body, indent=4, ensure_ascii=False)
    return " \\\n     ".join(lines) + " \\\n" + _shell_quote(payload) + "\n"
