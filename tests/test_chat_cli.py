"""chat.py used as a person uses it: in a pseudo-terminal (pexpect), and as a one-shot command in a script."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from huatuo.inference.chat import HuatuoChat
from huatuo.inference.loading import load_for_inference
from tests.chat_models import export_checkpoint
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

STATS = re.compile(r"\[prompt (\d+) tokens, dropped (\d+) rounds, reply (\d+) tokens in (\d+) pieces, .*?, (\w+)\]")
ENV = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_checkpoint(tmp_path_factory.mktemp("chat_cli") / "export")


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spawn_chat(*overrides: str) -> pexpect.spawn:
    """chat.py in a pseudo-terminal, as typed in a shell (stdout and stderr both reach the terminal).

    The child starts with SIGINT ignored, as it inherits from launchers that ignore it (and from this test process
    after some libraries ran): Ctrl-C must work anyway, because chat.py installs its own handling.
    """
    child = pexpect.spawn(
        sys.executable,
        [str(ROOT / "chat.py"), *overrides],
        cwd=str(ROOT),
        env=ENV,
        encoding="utf-8",
        timeout=180,  # startup on a busy 2-core machine; every wait below is bounded
        dimensions=(50, 200),
        preexec_fn=ignore_sigint,
    )
    child.expect("用户：")  # the banner, then the first prompt
    return child


def turn(child: pexpect.spawn, message: str) -> tuple[str, tuple[int, ...]]:
    """Send one message; return the streamed reply and its statistics (prompt, dropped, tokens, pieces)."""
    child.sendline(message)
    child.expect("HuatuoGPT: ")
    child.expect(STATS, timeout=120)
    reply = child.before.replace("\r\n", "\n").rstrip("\n")
    prompt, dropped, tokens, pieces = (int(child.match.group(i)) for i in range(1, 5))
    child.expect("用户：", timeout=60)
    return reply, (prompt, dropped, tokens, pieces)


def test_two_turns_clear_and_ctrl_d(export_dir):
    child = spawn_chat(
        f"model_path={export_dir}", "generation.do_sample=false", "generation.max_new_tokens=24", "verbose=true"
    )
    first, (p1, d1, n1, pieces1) = turn(child, "肚子疼怎么办？")
    second, (p2, d2, n2, pieces2) = turn(child, "需要去医院吗？")
    assert first and second and n1 == n2 == 24
    assert pieces1 >= 2 and pieces2 >= 2  # the reply reached the terminal in chunks (see also the Ctrl-C test)
    assert p2 > p1 + n1 // 2 and d1 == d2 == 0  # the second prompt carries the first round
    child.sendline("clear")
    child.expect("对话历史已清空")
    child.expect("用户：")
    again, (p3, _, _, _) = turn(child, "肚子疼怎么办？")
    assert p3 == p1 and again == first  # clear really reset the history (greedy: same question, same reply)
    child.sendeof()
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_a_long_reply_and_the_session_goes_on(export_dir):
    child = spawn_chat(
        f"model_path={export_dir}",
        "max_context=8192",  # the tiny model is RoPE-only, so it runs past its nominal 1024 positions
        "generation.do_sample=false",
        "generation.max_new_tokens=4000",  # under half the context: no warning is printed before the reply
        "+generation.min_new_tokens=4000",  # no early end-of-sequence: only Ctrl-C ends this reply soon
        "verbose=true",
    )
    prompts = []
    for message in ("请详细介绍一下高血压。", "还有呢？"):
        child.sendline(message)
        child.expect("HuatuoGPT: ")
        child.expect(r"\S\S\S", timeout=120)  # the reply has started streaming
        child.sendintr()
        child.expect(r"\[已打断\]", timeout=60)
        child.expect(STATS, timeout=60)
        prompt, _, tokens, _ = (int(child.match.group(i)) for i in range(1, 5))
        assert child.match.group(5) == "stopped" and 1 <= tokens < 4000
        prompts.append(prompt)
        child.expect("用户：", timeout=60)
    assert prompts[1] > prompts[0]  # the stopped reply stayed in the history
    # At the prompt Ctrl-C does not quit (the child started with SIGINT ignored: see spawn_chat). The pause lets
    # input() reach its select(): CPython's readline loop prints the prompt first, and a SIGINT handled in between
    # would wait for the next key; no person types that fast.
    time.sleep(0.2)
    child.sendintr()
    child.expect("输入 stop 或按 Ctrl-D 退出")
    child.expect("用户：")
    child.sendline("stop")
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0


def test_script_mode_prints_the_reply_and_nothing_else(export_dir):
    message = "孩子发烧38.5度，咳嗽，需要吃退烧药吗？"  # a comma and Chinese text, unquoted as in a shell
    command = [sys.executable, "chat.py", f"model_path={export_dir}", f"message={message}", "quantize=4bit"]
    command += ["generation.do_sample=false", "generation.max_new_tokens=24"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = HuatuoChat(
        load_for_inference(str(export_dir), quantize="4bit"), {"do_sample": False, "max_new_tokens": 24}
    )
    assert result.stdout == expected.chat([{"role": "user", "content": message}]) + "\n"
    assert "loaded" in result.stderr  # logs go to stderr


def test_a_missing_model_path_is_explained(tmp_path):
    executable = shutil.which("huatuo-chat", path=str(Path(sys.executable).parent)) or "huatuo-chat"
    result = subprocess.run(
        [executable, "message=hi"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "model_path is required: pass model_path=DIR" in result.stderr
    assert not any(tmp_path.iterdir())  # a chat writes no run folder or log file
