"""The chat API: one prompt builder everywhere, token-exact history fitting, streaming, stopping, loading."""

from __future__ import annotations

import gc
import io
import json
import random
import shutil
import threading
import weakref
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from huatuo.core.cli import quote_override
from huatuo.core.errors import ConversationError, ModelLoadError
from huatuo.core.template import CHAT_TEMPLATE, build_prompt
from huatuo.inference.chat import ContextTooLong, HuatuoChat
from huatuo.inference.generation import GenerationSettings
from huatuo.inference.loading import LoadedModel, load_for_inference
from huatuo.inference.session import ChatSession, run
from huatuo.inference.streaming import ReplyStreamer
from huatuo.inference.validation import chat_config_problems
from huatuo.models.loading import context_length
from tests.chat_models import CHATML_TEMPLATE, HUATUO_LOOKALIKE_TEMPLATE, export_checkpoint, with_template
from tests.helpers import BAICHUAN_TOKENIZER, compose_config
from tests.servers import make_tiny_checkpoint

GREEDY = {"do_sample": False, "max_new_tokens": 24}
QUESTION = [{"role": "user", "content": "肚子疼怎么办？"}]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_checkpoint(tmp_path_factory.mktemp("chat") / "export")


@pytest.fixture(scope="module")
def loaded(export_dir):
    return load_for_inference(str(export_dir))


# --- one source of truth for the prompt ----------------------------------------------------------------------


def _random_text(rng: random.Random) -> str:
    pieces = "患者 发热 咳嗽 ？ 。 abc XYZ 0123 ： : <问>： <答>： </s> <s> {{x}} {%if%} {# ' \" \\ % 😀 é".split(" ")
    pieces += [" ", "\n", "\t", "\u3000", "\n<答>：", "{{ messages }}", ""]  # whitespace, markers, Jinja syntax
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def _random_conversation(rng: random.Random) -> list[dict]:
    messages = []
    for i in range(rng.randint(1, 9)):
        content = _random_text(rng)
        if rng.random() < 0.15:  # OpenAI-style content parts
            content = [{"type": "text", "text": content}, {"type": "text", "text": _random_text(rng)}]
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    return messages


def test_exported_chat_template_renders_exactly_what_the_builder_renders(export_dir, loaded):
    tokenizer = AutoTokenizer.from_pretrained(export_dir)  # the tokenizer as any downstream user loads it
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert loaded.uses_huatuo_format
    rng = random.Random(8)
    for case in range(400):
        messages = _random_conversation(rng)
        for generation in (True, False):
            exported = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            built = build_prompt(messages, add_generation_prompt=generation)
            assert exported.encode() == built.encode(), (case, messages)
        if case % 20 == 0:  # the ids the chat feeds the model are the template's ids too
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
            assert loaded.encode(loaded.render(messages)).tolist()[0] == ids


# --- history fitting -------------------------------------------------------------------------------------------


def _long_conversation(rounds: int) -> list[dict]:
    messages = []
    for i in range(rounds):
        messages += [
            {"role": "user", "content": f"第{i}个问题：患者发热咳嗽{i}天，需要吃什么药？"},
            {"role": "assistant", "content": f"第{i}个回答：多喝水，注意休息，体温超过三十八度半请就医。" * 2},
        ]
    return messages + [{"role": "user", "content": "最后一个问题：还要注意什么？"}]


def test_history_is_cut_by_whole_rounds_oldest_first_to_the_exact_token(loaded):
    small = LoadedModel(loaded.model, loaded.tokenizer, loaded.device, max_context=200)
    chat = HuatuoChat(small, {**GREEDY, "max_new_tokens": 40})
    messages = _long_conversation(8)
    fitted = chat.fit(messages)
    count = lambda kept: small.encode(small.render(kept)).shape[1]  # noqa: E731
    assert fitted.dropped_rounds >= 1
    assert fitted.messages == messages[2 * fitted.dropped_rounds :]  # whole rounds, the oldest ones gone
    assert fitted.input_ids.shape[1] == count(fitted.messages) <= 200 - 40
    assert count(messages[2 * (fitted.dropped_rounds - 1) :]) > 200 - 40  # one more round would not fit
    assert small.tokenizer.decode(fitted.input_ids[0]) == build_prompt(fitted.messages)
    # a reply reserves max_new_tokens: asking for more room drops more rounds
    assert chat.fit(messages, max_new_tokens=100).dropped_rounds > fitted.dropped_rounds
    assert chat.fit(messages[-3:]).dropped_rounds == 0


def test_a_message_that_cannot_fit_is_refused_with_the_fix(loaded):
    small = LoadedModel(loaded.model, loaded.tokenizer, loaded.device, max_context=64)
    chat = HuatuoChat(small, GREEDY)
    with pytest.raises(ContextTooLong, match="shorten it or lower generation.max_new_tokens"):
        chat.fit([{"role": "user", "content": "头痛" * 200}])
    with pytest.raises(ConversationError, match="end with a user message"):
        chat.fit([*QUESTION, {"role": "assistant", "content": "a"}])


def test_a_reply_budget_as_large_as_the_context_is_capped_at_half(loaded, caplog):
    chat = HuatuoChat(loaded)  # the paper's max_new_tokens=1024 on a 1024-token model
    with caplog.at_level("WARNING", logger="huatuo.inference.chat"):
        fitted = chat.fit(_long_conversation(40))
    assert fitted.max_new_tokens == 512 and "capped at 512" in caplog.text
    assert 1 <= fitted.dropped_rounds < 40 and fitted.input_ids.shape[1] <= 512  # history still has room
    small = HuatuoChat(
        LoadedModel(loaded.model, loaded.tokenizer, loaded.device, max_context=128), {"max_new_tokens": 500}
    )
    reply = small.chat(_long_conversation(3), do_sample=False, min_new_tokens=500)
    assert reply and small.last.new_tokens == 64 and small.last.finish_reason == "length"  # never past the context
    assert small.last.prompt_tokens + small.last.new_tokens <= 128


def test_context_length_is_the_smaller_of_tokenizer_and_config(loaded):
    assert loaded.model.config.max_position_embeddings == 1024 and loaded.tokenizer.model_max_length == 2048
    assert context_length(loaded.model, loaded.tokenizer) == 1024 == loaded.context_length
    unset = SimpleNamespace(model_max_length=int(1e30))
    assert context_length(SimpleNamespace(config=SimpleNamespace(model_max_length=4096)), unset) == 4096  # Baichuan-13B


# --- streaming ------------------------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_reply_and_match_bare_generate(loaded):
    chat = HuatuoChat(loaded, GREEDY)
    pieces = list(chat.chat(QUESTION, stream=True))
    assert len(pieces) >= 2 and all(pieces)  # the first text at once, the rest in chunks of <= 20 ms
    assert chat.last.pieces == len(pieces) and chat.last.new_tokens == 24 and chat.last.finish_reason == "length"
    reply = "".join(pieces)
    assert chat.chat(QUESTION) == reply  # greedy: the same reply without streaming
    assert chat.chat("肚子疼怎么办？") == chat.chat(["肚子疼怎么办？"]) == reply  # shorthands
    ids = loaded.encode(build_prompt(QUESTION))
    bare = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), repetition_penalty=1.1, **GREEDY)
    assert reply == loaded.tokenizer.decode(bare[0, ids.shape[1] :], skip_special_tokens=True)


def test_stop_ends_a_long_reply_early(loaded):
    chat = HuatuoChat(loaded, {"do_sample": False, "max_new_tokens": 500, "min_new_tokens": 500})
    pieces = []
    for piece in chat.chat(QUESTION, stream=True):
        pieces.append(piece)
        chat.stop()  # what Ctrl-C does in the terminal
    assert chat.last.finish_reason == "stopped"
    assert 1 <= chat.last.new_tokens < 500
    assert len(chat.chat(QUESTION, max_new_tokens=8, min_new_tokens=8)) > 0  # the next reply is not cut by it


def test_stop_before_the_first_piece_is_not_lost(loaded):
    # Ctrl-C can land while the prompt is still being fitted (before generation starts): it must still count.
    chat = HuatuoChat(loaded, {"do_sample": False, "max_new_tokens": 500, "min_new_tokens": 500})
    stream = chat.chat(QUESTION, stream=True)
    chat.stop()
    reply = "".join(stream)
    assert chat.last.finish_reason == "stopped" and chat.last.new_tokens <= 1
    assert len(reply) <= 8
    chat.stop()  # a stop() between replies does not cut the next one
    assert chat.last.finish_reason == "stopped"
    chat.chat(QUESTION, max_new_tokens=8, min_new_tokens=8)
    assert chat.last.finish_reason == "length" and chat.last.new_tokens == 8


def test_seeded_sampling_repeats(loaded):
    chat = HuatuoChat(loaded, {"max_new_tokens": 16, "seed": 3, "temperature": 1.0, "top_p": 1.0})
    assert chat.chat(QUESTION) == chat.chat(QUESTION)


class ScriptedModel:
    """Stands in for a causal LM: ``generate`` streams fixed ids and obeys the stopping criteria, like HF's loop."""

    def __init__(self, ids: list[int], fail_at: int | None = None, hold_at: int | None = None) -> None:
        self.ids, self.fail_at, self.hold_at, self.produced = ids, fail_at, hold_at, 0
        self.config = SimpleNamespace(max_position_embeddings=100_000)
        self.go, self.released = threading.Event(), None

    def generate(self, input_ids, streamer, stopping_criteria, max_new_tokens, **kwargs):
        streamer.put(input_ids)
        sequence = input_ids
        for step, token in enumerate(self.ids[:max_new_tokens]):
            if step == self.fail_at:
                raise RuntimeError("CUDA out of memory (scripted)")
            if step == self.hold_at:  # pause mid-reply until the reader says it has seen text (bounded wait)
                self.released = self.go.wait(timeout=60)
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            self.produced += 1
            streamer.put(torch.tensor([token]))
            if stopping_criteria(sequence, None).all():
                break
        streamer.end()


def _scripted_chat(tokenizer, text: str, template: str | None = CHAT_TEMPLATE, **script):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = template
    model = ScriptedModel(tokenizer.encode(text, add_special_tokens=False) * 3, **script)
    return HuatuoChat(LoadedModel(model, tokenizer, torch.device("cpu")), {"max_new_tokens": 500}), model


def test_text_reaches_the_reader_while_the_model_is_still_generating(tiny_tokenizer):
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息，必要时就医。", hold_at=5)
    pieces = []
    for piece in chat.chat(QUESTION, stream=True):
        if not pieces:
            seen_at = model.produced
            model.go.set()  # only now may the model go on
        pieces.append(piece)
    assert model.released is True and seen_at <= 5 < len(model.ids)  # the first text came mid-generation
    assert "".join(pieces) == tiny_tokenizer.decode(model.ids[: chat.last.new_tokens], skip_special_tokens=True)


def test_on_text_streams_in_the_calling_thread_while_the_model_generates(tiny_tokenizer):
    # chat.py's path: no worker thread and no queue; each settled piece reaches the callback before the next token
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息，必要时就医。")
    calls = []
    reply = chat.chat(QUESTION, on_text=lambda piece: calls.append((piece, model.produced, threading.get_ident())))
    assert reply == "".join(piece for piece, _, _ in calls) and len(calls) >= 5
    assert {thread for _, _, thread in calls} == {threading.get_ident()}
    produced = [n for _, n, _ in calls]
    assert produced == sorted(produced) and produced[0] < 5 < len(model.ids)  # piece by piece, not at the end
    assert chat.last.pieces == len(calls) and chat.last.first_piece_s is not None
    assert reply == tiny_tokenizer.decode(model.ids[: chat.last.new_tokens], skip_special_tokens=True)


def test_on_text_can_stop_the_reply_and_its_errors_reach_the_caller(tiny_tokenizer):
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息。" * 20)
    stop = threading.Event()
    reply = chat.chat(QUESTION, on_text=lambda piece: stop.set(), stop_event=stop)  # Ctrl-C in chat.py sets it
    assert chat.last.finish_reason == "stopped" and chat.last.new_tokens == model.produced <= 2 and reply
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息。" * 20)
    calls = []

    def broken(piece: str) -> None:  # say, a closed pipe
        calls.append(piece)
        raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError, match="stdout closed"):
        chat.chat(QUESTION, on_text=broken)
    assert len(calls) == 1 and model.produced <= 2  # generation ended there; the callback was not called again
    with pytest.raises(ValueError, match="on_text is for stream=False"):
        chat.chat(QUESTION, stream=True, on_text=print)


def test_a_reply_is_cut_where_the_model_starts_a_new_user_turn(tiny_tokenizer):
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息。\n<问>：那我还要")
    assert chat.chat(QUESTION) == "多喝水，注意休息。"
    assert chat.last.finish_reason == "turn"
    assert model.produced < len(model.ids)  # generation stopped right there, not at max_new_tokens
    # other chat formats have their own end-of-turn tokens: the text passes through
    chat, _ = _scripted_chat(tiny_tokenizer, "多喝水。\n<问>：那", template=CHATML_TEMPLATE)
    assert chat.chat(QUESTION).startswith("多喝水。\n<问>：那")


def test_text_that_only_looks_like_a_new_turn_is_released(tiny_tokenizer):
    def feed(text: str) -> ReplyStreamer:
        streamer = ReplyStreamer(tiny_tokenizer, "\n<问>：", stop_event=SimpleNamespace(is_set=lambda: False))
        streamer.put(torch.tensor([[1]]))  # the prompt
        for token in tiny_tokenizer.encode(text, add_special_tokens=False):
            streamer.put(torch.tensor([token]))
        return streamer

    held = feed("第一点。\n<问")
    assert held.text == "第一点。"  # "\n<问" could begin a new turn: held back
    held.end()  # the reply ended there: it was text after all
    assert held.text == "第一点。\n<问" and not held.hit_stop_text and "".join(held) == held.text
    assert feed("第一点。\n<问题").text == "第一点。\n<问题"  # released as soon as it differs


@pytest.mark.skipif(not BAICHUAN_TOKENIZER.exists(), reason="needs ../shared/assets/baichuan2/tokenizer.model")
def test_incremental_decoding_matches_a_full_decode_with_the_baichuan2_vocabulary(tmp_path):
    shutil.copy(BAICHUAN_TOKENIZER, tmp_path / "tokenizer.model")  # SentencePiece with byte fallback, no dummy prefix
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for text in [
        "患者男，45岁，发热3天，体温38.5℃。建议：多喝水！\n1. 布洛芬 200mg\n2. 如有 chest pain 请就医 😀",
        "  leading spaces, 中文 mixed\ttabs and rare characters: ©®™ 𠀋",
    ]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        streamer = ReplyStreamer(tokenizer, "\n<问>：", threading.Event())
        streamer.put(torch.tensor([[1]]))
        for token in ids:
            streamer.put(torch.tensor([token]))
        assert streamer.text == tokenizer.decode(ids)  # settled token by token, before the final decode
        streamer.end()
        assert "".join(streamer) == tokenizer.decode(ids)


@pytest.mark.parametrize("stream", [False, True])
def test_a_generation_error_reaches_the_caller(tiny_tokenizer, stream):
    chat, _ = _scripted_chat(tiny_tokenizer, "多喝水，注意休息。", fail_at=3)
    with pytest.raises(RuntimeError, match="out of memory"):
        "".join(chat.chat(QUESTION, stream=True)) if stream else chat.chat(QUESTION)
    assert chat.last.finish_reason == "error" and chat.last.new_tokens == 3
    chat.loaded.model.fail_at = None  # the chat goes on after an error
    reply = "".join(chat.chat(QUESTION, stream=True)) if stream else chat.chat(QUESTION)
    assert reply == "多喝水，注意休息。" * 3 and chat.last.finish_reason == "eos"


class FailingDecode:
    """A tokenizer whose decode fails on one id, like a SentencePiece model given an id past its vocabulary."""

    def __init__(self, tokenizer, bad_id: int) -> None:
        self._tokenizer, self._bad_id = tokenizer, bad_id

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)

    def decode(self, ids, **kwargs) -> str:
        if self._bad_id in ids:
            raise IndexError("piece id is out of range (scripted)")
        return self._tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_whose_text_cannot_be_decoded_fails_instead_of_hanging(tiny_tokenizer, stream):
    # The decode fails while generating and again in the final settling decode; the stream must still close.
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水。")
    chat.loaded.tokenizer = FailingDecode(chat.loaded.tokenizer, bad_id=model.ids[2])
    outcome: list[BaseException | str] = []

    def reply() -> None:
        try:
            outcome.append("".join(chat.chat(QUESTION, stream=True)) if stream else chat.chat(QUESTION))
        except BaseException as err:  # noqa: BLE001 - inspected below
            outcome.append(err)

    reader = threading.Thread(target=reply, daemon=True)
    reader.start()
    reader.join(timeout=60)  # bounded: a regression shows as a failure, not a hung test run
    assert not reader.is_alive(), "the reader is still waiting for a stream that never closes"
    assert isinstance(outcome[0], IndexError) and chat.last.finish_reason == "error"
    chat.loaded.tokenizer = chat.loaded.tokenizer._tokenizer
    assert "".join(chat.chat(QUESTION, stream=True)) == chat.chat(QUESTION)  # the worker thread survived


def test_a_callers_stop_event_is_left_alone_and_replies_come_one_at_a_time(tiny_tokenizer):
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息。" * 5)
    mine = threading.Event()
    for stream in (True, True, False):  # a stream read to its end leaves the caller's event unset
        "".join(chat.chat(QUESTION, stream=True, stop_event=mine)) if stream else chat.chat(QUESTION, stop_event=mine)
        assert not mine.is_set() and chat.last.finish_reason == "eos"
    stream, before = chat.chat(QUESTION, stream=True, stop_event=mine), model.produced
    next(stream)
    with pytest.raises(RuntimeError, match="still generating another reply"):
        chat.chat(QUESTION)  # it would run a second generate on the same model at the same time
    stream.close()  # abandoned: generation ends, and the caller's event is still not set
    assert chat.last.finish_reason == "stopped" and model.produced - before < len(model.ids) and not mine.is_set()
    assert chat.chat(QUESTION, stop_event=mine) and chat.last.finish_reason == "eos"


def test_abandoning_a_stream_stops_generation(tiny_tokenizer):
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水，注意休息。" * 20)
    stream = chat.chat(QUESTION, stream=True)
    next(stream)
    stream.close()
    assert chat.last.finish_reason == "stopped" and model.produced < len(model.ids)


def test_a_dropped_chat_frees_its_model_and_its_thread(tiny_tokenizer):
    before = set(threading.enumerate())
    chat, model = _scripted_chat(tiny_tokenizer, "多喝水。")
    (worker,) = set(threading.enumerate()) - before  # this chat's generation thread
    assert "".join(chat.chat(QUESTION, stream=True)) == chat.chat(QUESTION)  # both paths, the worker's included
    model_ref = weakref.ref(model)
    del chat, model
    gc.collect()
    assert model_ref() is None  # an evaluation loop that loads model after model does not pile them up
    worker.join(timeout=5)  # the generation thread ends once its chat is gone (bounded wait)
    assert not worker.is_alive()


# --- other models ---------------------------------------------------------------------------------------------


def test_a_model_with_its_own_template_is_prompted_with_it(export_dir, tmp_path):
    folder = with_template(export_dir, tmp_path / "chatml", CHATML_TEMPLATE)
    other = load_for_inference(str(folder))
    assert not other.uses_huatuo_format
    messages = [{"role": "system", "content": "你是医生。"}, *_long_conversation(6)]
    assert other.render(messages) == other.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert other.render(messages).endswith("<|im_start|>assistant\n")
    other.max_context = 220
    chat = HuatuoChat(other, GREEDY)
    fitted = chat.fit(messages)
    assert fitted.dropped_rounds >= 1 and fitted.messages[0] == messages[0]  # the system message survives
    assert fitted.messages[1:] == messages[1 + 2 * fitted.dropped_rounds :]
    assert chat.stop_text is None and isinstance(chat.chat(messages), str)
    forced = LoadedModel(other.model, other.tokenizer, other.device, prompt_format="huatuo")
    assert forced.render(QUESTION) == build_prompt(QUESTION)


@pytest.mark.parametrize(("template", "ours"), [(None, True), (HUATUO_LOOKALIKE_TEMPLATE, True)])
def test_folders_without_our_template_text_still_get_our_format(export_dir, tmp_path, template, ours):
    folder = with_template(export_dir, tmp_path / "variant", template)  # e.g. a released HuatuoGPT2 folder
    variant = load_for_inference(str(folder))
    assert variant.uses_huatuo_format is ours
    assert variant.render(_long_conversation(2)) == build_prompt(_long_conversation(2))


@pytest.mark.parametrize(("quantize", "layer"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_loading_chats_on_cpu(export_dir, quantize, layer):
    quantized = load_for_inference(str(export_dir), quantize=quantize)
    assert type(quantized.model.model.layers[0].self_attn.q_proj).__name__ == layer
    chat = HuatuoChat(quantized, GREEDY)
    assert chat.chat(QUESTION) and chat.last.new_tokens == 24


def test_an_unknown_architecture_is_a_load_error_naming_the_folder(export_dir, tmp_path):
    folder = with_template(export_dir, tmp_path / "unknown", CHAT_TEMPLATE)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no_such_arch"}))
    with pytest.raises(ModelLoadError, match=f"cannot load a (model|tokenizer) from '{folder}'"):
        load_for_inference(str(folder))


def test_bad_paths_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_for_inference(str(tmp_path))
    (tmp_path / "last.ckpt").write_text("x")
    with pytest.raises(ValueError, match="Lightning checkpoint.*export"):
        load_for_inference(str(tmp_path / "last.ckpt"))
    with pytest.raises(ValueError, match="no such folder"):
        load_for_inference("./missing/export")


# --- settings and config --------------------------------------------------------------------------------------


def test_defaults_are_the_papers_and_backbone_files_can_carry_their_own(tmp_path):
    assert GenerationSettings() == GenerationSettings(1024, True, 0.3, 0.7, None, 1.1)
    cfg = compose_config("chat", [f"model_path={tmp_path}"])
    assert OmegaConf.to_container(cfg.generation, resolve=True) == {
        "max_new_tokens": None,  # the model's own generation_config.json, else 1024
        "do_sample": True,
        "temperature": 0.3,
        "top_p": 0.7,
        "top_k": None,
        "repetition_penalty": 1.1,
        "seed": None,
    }
    cfg = compose_config("chat", ["backbone=tiny", "+backbone.generation.top_k=5", "+backbone.generation.top_p=0.85"])
    assert (cfg.generation.top_k, cfg.generation.top_p, cfg.generation.temperature) == (5, 0.85, 0.3)


def test_an_export_caps_the_reply_at_half_the_context_and_chat_takes_it_without_a_warning(tmp_path, caplog):
    # The demo backbone has 512 positions: the paper's 1024 would leave a conversation no room at all.
    export_dir = make_tiny_checkpoint(tmp_path / "export", positions=512, generation=None)
    saved = json.loads((export_dir / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 256 and saved["temperature"] == 0.3
    with caplog.at_level("WARNING", logger="huatuo.inference.chat"):
        chat = HuatuoChat.from_pretrained(str(export_dir), do_sample=False, seed=0)
        chat.fit("头痛怎么办？")
    assert chat.settings.max_new_tokens == 256
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    asked = HuatuoChat.from_pretrained(str(export_dir), max_new_tokens=1024)
    with caplog.at_level("WARNING", logger="huatuo.inference.chat"):
        assert asked.fit("头痛怎么办？").max_new_tokens == 256  # asked for explicitly: capped, with the warning
    assert any("max_new_tokens=1024" in r.getMessage() for r in caplog.records)


def test_config_problems_name_the_key_the_value_and_the_fix():
    cfg = compose_config(
        "chat",
        ["quantize=3bit", "device=tpu", "generation.top_p=1.5", "+generation.min_new_tokenz=3", "max_context=-1"],
    )
    problems = "\n".join(chat_config_problems(cfg))
    assert "model_path is required: pass model_path=DIR" in problems
    assert "quantize='3bit': use 4bit, 8bit or null" in problems
    assert "device='tpu'" in problems
    assert "generation.top_p=1.5 must be in (0, 1]" in problems
    assert "generation.min_new_tokenz is not a generation setting" in problems
    assert "max_context=-1" in problems
    tiny = "\n".join(chat_config_problems(compose_config("chat", ["backbone=tiny"])))
    assert "backbone=tiny names no weights" in tiny and "model_path=DIR" in tiny
    if not torch.cuda.is_available():
        assert "no CUDA device" in "\n".join(chat_config_problems(compose_config("chat", ["device=cuda"])))


@pytest.mark.parametrize("text", ["肚子疼怎么办？", "a,b=c", "it's", "${oc.env:HOME}", "x\\", "[1, 2]", "多行\n文本"])
def test_messages_survive_the_command_line_grammar(text, tmp_path):
    cfg = compose_config("chat", [f"model_path={tmp_path}", f"message={quote_override(text)}"])
    assert cfg.message == text


# --- the terminal loop and the script mode, in process ---------------------------------------------------------


def test_session_keeps_history_and_clear_resets_it(loaded, capsys):
    stdin = io.StringIO("肚子疼怎么办？\n要去医院吗？\nclear\n肚子疼怎么办？\n发烧\\\n三天了\nstop\n要是没停下来\n")
    stdout = io.StringIO()
    session = ChatSession(HuatuoChat(loaded, GREEDY), stdin, stdout, verbose=True)
    replies, prompt_tokens = [], []
    original = session.reply

    def recording_reply(message: str) -> str | None:
        replies.append(original(message))
        prompt_tokens.append(session.chat.last.prompt_tokens)
        return replies[-1]

    session.reply = recording_reply
    assert session.run() == 0
    assert len(replies) == 4  # `stop` quit before the last line
    assert replies[2] == replies[0]  # after `clear` the same first question gets the same (greedy) reply
    assert prompt_tokens[1] > prompt_tokens[0] == prompt_tokens[2]
    assert session.history[0]["content"] == "肚子疼怎么办？" and session.history[2]["content"] == "发烧\n三天了"
    out = stdout.getvalue()
    assert out.count("HuatuoGPT: ") == 4 and "对话历史已清空" in out
    assert capsys.readouterr().err.count("[prompt ") == 4


def test_script_mode_prints_only_the_reply(export_dir, loaded):
    expected = HuatuoChat(loaded, GREEDY).chat(QUESTION)
    overrides = [f"model_path={export_dir}", "generation.do_sample=false", "generation.max_new_tokens=24"]
    stdout = io.StringIO()
    assert run(compose_config("chat", [*overrides, f"message={quote_override('肚子疼怎么办？')}"]), stdout=stdout) == 0
    assert stdout.getvalue() == expected + "\n"
    piped, stdout = io.StringIO("肚子疼怎么办？\n"), io.StringIO()  # not a TTY: stdin is the message
    assert run(compose_config("chat", overrides), stdin=piped, stdout=stdout) == 0
    assert stdout.getvalue() == expected + "\n"
