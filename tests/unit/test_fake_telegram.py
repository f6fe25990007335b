"""The fake Telegram Bot API server, driven by a real aiogram Bot over HTTP."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.methods import SetMyDescription
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    KeyboardButton,
    LabeledPrice,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from aisha.sandbox import FakeTelegramServer, FakeUser, image_size, parse_html
from aisha.sandbox.telegram import RefusedCall

pytest_plugins = ["pytester"]

USER = FakeUser(id=4242, first_name="Ann", username="ann")


def png(width: int, height: int) -> bytes:
    """A valid PNG of the given size (one grey channel), built without Pillow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + b"\x80" * width for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def make_bot(server: FakeTelegramServer, token: str | None = None, **kwargs: object) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(server.base_url))
    return Bot(token or server.token, session=session, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as fake:
        yield fake
    assert fake.errors == []


@pytest.fixture
async def bot(server: FakeTelegramServer) -> AsyncIterator[Bot]:
    bot = make_bot(server)
    yield bot
    await bot.session.close()


async def test_get_me_returns_the_bot(server: FakeTelegramServer, bot: Bot) -> None:
    me = await bot.get_me()

    assert me.username == "aisha_test_bot"
    assert me.id == server.bot_id == 123456
    assert me.is_bot
    assert server.base_url.startswith("http://127.0.0.1:")
    assert [call.method for call in server.calls] == ["getMe"]


async def test_send_message_is_recorded_with_parsed_reply_markup(
    server: FakeTelegramServer, bot: Bot
) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Buy", callback_data="buy:10")]],
    )

    message = await bot.send_message(USER.id, "Hello 42", reply_markup=keyboard)

    call = await server.wait_for_call("sendMessage")
    assert call.params["chat_id"] == USER.id
    assert call.params["text"] == "Hello 42"
    assert call.params["reply_markup"] == {"inline_keyboard": [[{"text": "Buy", "callback_data": "buy:10"}]]}
    assert message.text == "Hello 42"
    assert message.message_id == 1
    assert message.chat.type == "private"
    assert message.from_user is not None and message.from_user.id == server.bot_id
    assert message.reply_markup is not None
    assert message.reply_markup.inline_keyboard[0][0].callback_data == "buy:10"
    [stored] = server.chat_messages(USER.id)
    assert stored["text"] == "Hello 42"
    assert stored["edited"] is False


async def test_messages_get_increasing_ids_per_chat(server: FakeTelegramServer, bot: Bot) -> None:
    first = await bot.send_message(1, "a")
    second = await bot.send_message(1, "b")
    other = await bot.send_message(2, "c")

    assert (first.message_id, second.message_id, other.message_id) == (1, 2, 1)


async def test_html_parse_mode_gives_plain_text_and_entities(server: FakeTelegramServer) -> None:
    bot = make_bot(server, default=DefaultBotProperties(parse_mode="HTML"))
    try:
        message = await bot.send_message(USER.id, "<b>Баланс</b>: 5 &lt; 10 <a href='https://x.io'>link</a>")
        assert message.text == "Баланс: 5 < 10 link"
        assert message.entities is not None
        assert [(e.type, e.offset, e.length) for e in message.entities] == [
            ("bold", 0, 6),
            ("text_link", 15, 4),
        ]
        assert message.entities[1].url == "https://x.io"

        # Unescaped user input breaks HTML on Telegram, and here too.
        with pytest.raises(TelegramBadRequest, match="can't parse entities"):
            await bot.send_message(USER.id, "1 <2 and <unknown>")
        assert server.calls_of("sendMessage")[-1].failed
    finally:
        await bot.session.close()


def test_parse_html_offsets_are_utf16() -> None:
    text, entities = parse_html("😀 <i>hi</i> <pre><code class='language-py'>x</code></pre>")

    assert text == "😀 hi x"
    assert entities == [
        {"type": "italic", "offset": 3, "length": 2},
        {"type": "pre", "offset": 6, "length": 1, "language": "py"},
    ]
    with pytest.raises(ValueError, match="end tag"):
        parse_html("<b>open")


async def test_send_photo_stores_bytes_that_download_returns(server: FakeTelegramServer, bot: Bot) -> None:
    content = png(3, 2)

    message = await bot.send_photo(USER.id, BufferedInputFile(content, "avatar.png"), caption="Your avatar")

    call = await server.wait_for_call("sendPhoto")
    assert list(call.files.values()) == [content]
    assert call.params["photo"].startswith("attach://")
    assert message.caption == "Your avatar"
    assert message.photo is not None
    photo = message.photo[-1]
    assert (photo.width, photo.height, photo.file_size) == (3, 2, len(content))
    downloaded = await bot.download(photo.file_id)
    assert downloaded is not None and downloaded.read() == content
    file = await bot.get_file(photo.file_id)
    assert file.file_path is not None and file.file_path.startswith("photos/")


async def test_send_by_file_id_and_by_url(server: FakeTelegramServer, bot: Bot) -> None:
    file_id, unique_id = server.register_file(b"%PDF-1.4", file_path_hint="documents/report.pdf")

    by_id = await bot.send_document(USER.id, file_id)
    by_url = await bot.send_photo(USER.id, "https://example.com/cat.jpg")

    assert by_id.document is not None
    assert (by_id.document.file_id, by_id.document.file_unique_id) == (file_id, unique_id)
    assert by_url.photo is not None
    stored = server.get_file(by_url.photo[-1].file_id)
    assert stored is not None and stored.url == "https://example.com/cat.jpg" and stored.content is None
    with pytest.raises(TelegramBadRequest, match="wrong file identifier"):
        await bot.send_document(USER.id, "no-such-file-id")


async def test_send_document_voice_and_media_group(server: FakeTelegramServer, bot: Bot) -> None:
    document = await bot.send_document(USER.id, BufferedInputFile(b"a,b\n1,2\n", "history.csv"))
    voice = await bot.send_voice(USER.id, BufferedInputFile(b"OggS...", "v.ogg"), duration=3)
    album = await bot.send_media_group(
        USER.id,
        [
            InputMediaPhoto(media=BufferedInputFile(png(4, 4), "1.png"), caption="first"),
            InputMediaPhoto(media=BufferedInputFile(png(5, 5), "2.png")),
        ],
    )

    assert document.document is not None
    assert (document.document.file_name, document.document.mime_type) == ("history.csv", "text/csv")
    assert voice.voice is not None and voice.voice.duration == 3
    assert len(album) == 2
    assert album[0].media_group_id == album[1].media_group_id is not None
    assert album[0].caption == "first"
    assert [m.photo[-1].width for m in album if m.photo] == [4, 5]
    assert len(server.calls_of("sendMediaGroup")[0].files) == 2


async def test_queued_update_arrives_by_get_updates_and_offset_confirms_it(
    server: FakeTelegramServer, bot: Bot
) -> None:
    update = server.message_update(USER, "/start ref42")
    server.queue_update(update)

    [received] = await bot.get_updates(timeout=1)

    assert received.update_id == update["update_id"]
    assert received.message is not None
    assert received.message.text == "/start ref42"
    assert received.message.from_user is not None and received.message.from_user.username == "ann"
    assert received.message.entities is not None and received.message.entities[0].type == "bot_command"
    # Not confirmed yet: served again.
    assert len(await bot.get_updates(timeout=0)) == 1
    assert await bot.get_updates(offset=received.update_id + 1, timeout=0) == []
    assert server.pending_updates == []


async def test_long_poll_wakes_up_when_an_update_is_queued(server: FakeTelegramServer, bot: Bot) -> None:
    # The long poll would last 60 s: an answer within the 30 s guard can only be the wake-up.
    poll = asyncio.create_task(bot.get_updates(timeout=60, request_timeout=90))
    await server.wait_for_call("getUpdates")

    server.queue_update(server.message_update(USER, "hi"))

    updates = await asyncio.wait_for(poll, 30)
    assert len(updates) == 1


async def test_stop_ends_a_pending_long_poll_promptly() -> None:
    server = FakeTelegramServer()
    await server.start()
    bot = make_bot(server)
    try:
        # The long poll would last 60 s: ended within the 30 s guard, it was the stop that ended it.
        poll = asyncio.create_task(bot.get_updates(timeout=60, request_timeout=90))
        await server.wait_for_call("getUpdates")
        await server.stop()
        assert await asyncio.wait_for(poll, 30) == []
    finally:
        await bot.session.close()
        await server.stop()


async def test_aiogram_polling_round_trip_and_shutdown(server: FakeTelegramServer, bot: Bot) -> None:
    dispatcher = Dispatcher()

    @dispatcher.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text}")

    polling = asyncio.create_task(
        dispatcher.start_polling(bot, handle_signals=False, close_bot_session=False, polling_timeout=30)
    )
    try:
        server.queue_update(server.message_update(USER, "ping"))
        call = await server.wait_for_call("sendMessage")
        assert call.params["text"] == "echo: ping"
        assert [m["text"] for m in server.chat_messages(USER.id)] == ["ping", "echo: ping"]
    finally:
        await dispatcher.stop_polling()
        await asyncio.wait_for(polling, 5)


async def test_allowed_updates_filter_what_get_updates_serves(server: FakeTelegramServer, bot: Bot) -> None:
    server.queue_update(server.message_update(USER, "text"))
    server.queue_update(server.pre_checkout_update(USER, currency="XTR", total_amount=5, invoice_payload="p"))

    updates = await bot.get_updates(allowed_updates=["pre_checkout_query"], timeout=0)

    assert [u.pre_checkout_query is not None for u in updates] == [True]


async def test_fail_next_makes_aiogram_raise_retry_after(server: FakeTelegramServer, bot: Bot) -> None:
    server.fail_next("sendMessage", 429, retry_after=1)

    with pytest.raises(TelegramRetryAfter) as raised:
        await bot.send_message(USER.id, "first")
    message = await bot.send_message(USER.id, "second")

    assert raised.value.retry_after == 1
    failed, succeeded = server.calls_of("sendMessage")
    assert failed.failed and failed.error == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    assert not succeeded.failed
    assert message.text == "second"
    assert [m["text"] for m in server.chat_messages(USER.id)] == ["second"]


async def test_fail_next_with_other_codes_and_times(server: FakeTelegramServer, bot: Bot) -> None:
    server.fail_next("SENDMESSAGE", 400, description="Bad Request: chat not found", times=2)

    for _ in range(2):
        with pytest.raises(TelegramBadRequest, match="chat not found"):
            await bot.send_message(USER.id, "x")
    await bot.send_message(USER.id, "x")


async def test_wrong_token_is_unauthorized(server: FakeTelegramServer) -> None:
    bot = make_bot(server, token="999:WRONG")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await bot.get_me()
    finally:
        await bot.session.close()
    assert server.calls[-1].failed


async def test_edits_and_deletions_are_reflected_in_chat_messages(
    server: FakeTelegramServer, bot: Bot
) -> None:
    keyboard = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Go", callback_data="go")]])
    sent = await bot.send_message(USER.id, "Generating…", reply_markup=keyboard)
    other = await bot.send_message(USER.id, "temporary")

    edited = await bot.edit_message_text("Done", chat_id=USER.id, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("Done", chat_id=USER.id, message_id=sent.message_id)
    await bot.delete_message(USER.id, other.message_id)
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(USER.id, other.message_id)

    assert isinstance(edited, Message) and edited.edit_date is not None
    [stored] = server.chat_messages(USER.id)
    assert stored["text"] == "Done"
    assert stored["edited"] is True
    assert "reply_markup" not in stored  # an edit without reply_markup drops the keyboard


async def test_edit_caption_and_reply_markup(server: FakeTelegramServer, bot: Bot) -> None:
    photo = await bot.send_photo(USER.id, BufferedInputFile(png(1, 1), "p.png"), caption="v1")
    keyboard = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Next", callback_data="n")]])

    await bot.edit_message_caption(chat_id=USER.id, message_id=photo.message_id, caption="v2")
    await bot.edit_message_reply_markup(chat_id=USER.id, message_id=photo.message_id, reply_markup=keyboard)

    [stored] = server.chat_messages(USER.id)
    assert stored["caption"] == "v2"
    assert stored["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "n"
    with pytest.raises(TelegramBadRequest, match="there is no text"):
        await bot.edit_message_text("x", chat_id=USER.id, message_id=photo.message_id)


async def test_reply_keyboard_state_is_tracked(server: FakeTelegramServer, bot: Bot) -> None:
    keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Balance")]], resize_keyboard=True)

    message = await bot.send_message(USER.id, "menu", reply_markup=keyboard)
    shown = server.reply_keyboard(USER.id)
    await bot.send_message(USER.id, "bye", reply_markup=ReplyKeyboardRemove())

    assert message.reply_markup is None  # only inline keyboards appear on a Message
    assert shown is not None and shown["keyboard"] == [[{"text": "Balance"}]]
    assert server.reply_keyboard(USER.id) is None


async def test_user_files_can_be_fetched_by_the_bot(server: FakeTelegramServer, bot: Bot) -> None:
    photo = png(7, 9)
    update = server.message_update(USER, photo=photo, caption="me")
    voice_update = server.message_update(USER, voice=(b"OggS voice", 12))
    document_update = server.message_update(USER, document=(b"data", "notes.txt", "text/plain"))

    [size] = update["message"]["photo"]
    assert (size["width"], size["height"], size["file_size"]) == (7, 9, len(photo))
    downloaded = await bot.download(size["file_id"])
    assert downloaded is not None and downloaded.read() == photo
    voice = voice_update["message"]["voice"]
    assert (voice["duration"], voice["mime_type"]) == (12, "audio/ogg")
    downloaded_voice = await bot.download(voice["file_id"])
    assert downloaded_voice is not None and downloaded_voice.read() == b"OggS voice"
    assert document_update["message"]["document"]["file_name"] == "notes.txt"
    assert len(server.downloads) == 2


async def test_copy_message_sends_the_bots_own_copy_and_refuses_what_telegram_refuses(
    server: FakeTelegramServer, bot: Bot
) -> None:
    admin = FakeUser(id=77, first_name="Op")
    photo = png(5, 5)
    text = server.message_update(USER, "<b>not html</b> as typed")
    picture = server.message_update(USER, photo=photo, caption="my receipt")
    for update in (text, picture):
        server.queue_update(update)

    copied = await bot.copy_message(admin.id, USER.id, text["message"]["message_id"])
    with_caption = await bot.copy_message(
        admin.id, USER.id, picture["message"]["message_id"], caption="<b>From Ann</b>", parse_mode="HTML"
    )

    first, second = server.chat_messages(admin.id)
    assert first["message_id"] == copied.message_id
    assert first["text"] == "<b>not html</b> as typed" and first["from"]["is_bot"]
    assert second["message_id"] == with_caption.message_id
    assert second["photo"] == picture["message"]["photo"] and second["caption"] == "From Ann"
    assert second["caption_entities"][0]["type"] == "bold"
    with pytest.raises(TelegramBadRequest, match="message to copy not found"):
        await bot.copy_message(admin.id, USER.id, 999)
    payment = server.message_update(USER, successful_payment={"total_amount": 5})
    server.queue_update(payment)
    with pytest.raises(TelegramBadRequest, match="message can't be copied"):
        await bot.copy_message(admin.id, USER.id, payment["message"]["message_id"])


async def test_callback_query_can_be_answered_once(server: FakeTelegramServer, bot: Bot) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Pick", callback_data="pick:1")]]
    )
    await bot.send_message(USER.id, "choose", reply_markup=keyboard)
    [shown] = server.chat_messages(USER.id)

    update = server.callback_update(USER, "pick:1", message=shown)
    query = CallbackQuery.model_validate(update["callback_query"])
    await bot.answer_callback_query(query.id, text="Picked")

    assert query.data == "pick:1"
    assert query.message is not None and query.message.message_id == shown["message_id"]
    assert server.callback_answers[query.id]["text"] == "Picked"
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query.id)


async def test_callback_data_longer_than_64_bytes_is_rejected(server: FakeTelegramServer, bot: Bot) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="x", callback_data="é" * 33)]]
    )

    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(USER.id, "too long", reply_markup=keyboard)


async def test_stars_invoice_pre_checkout_and_refund(server: FakeTelegramServer, bot: Bot) -> None:
    invoice = await bot.send_invoice(
        USER.id,
        title="100 credits",
        description="Top-up",
        payload="topup:100",
        currency="XTR",
        prices=[LabeledPrice(label="100 credits", amount=50)],
    )
    link = await bot.create_invoice_link(
        title="t", description="d", payload="p", currency="XTR", prices=[LabeledPrice(label="x", amount=1)]
    )
    checkout = server.pre_checkout_update(USER, currency="XTR", total_amount=50, invoice_payload="topup:100")
    query_id = checkout["pre_checkout_query"]["id"]
    await bot.answer_pre_checkout_query(query_id, ok=True)
    paid = server.successful_payment_update(
        USER, currency="XTR", total_amount=50, invoice_payload="topup:100"
    )
    server.queue_update(paid)
    charge_id = paid["message"]["successful_payment"]["telegram_payment_charge_id"]

    assert invoice.invoice is not None
    assert (invoice.invoice.currency, invoice.invoice.total_amount) == ("XTR", 50)
    assert link.startswith("https://t.me/$")
    invoice_params = server.invoice_for_link(link)
    assert invoice_params is not None and invoice_params["payload"] == "p"
    assert server.pre_checkout_answers[query_id] == {"ok": True, "error_message": None}
    [update] = await bot.get_updates(timeout=0)
    assert update.message is not None and update.message.successful_payment is not None
    assert await bot.refund_star_payment(USER.id, charge_id)
    assert server.refunded(charge_id)
    with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(USER.id, charge_id)


async def test_a_refund_made_outside_the_bot_arrives_as_refunded_payment(
    server: FakeTelegramServer, bot: Bot
) -> None:
    paid = server.successful_payment_update(USER, currency="XTR", total_amount=50, invoice_payload="p")
    charge_id = paid["message"]["successful_payment"]["telegram_payment_charge_id"]
    server.queue_update(
        server.refunded_payment_update(USER, telegram_payment_charge_id=charge_id, total_amount=50)
    )
    [update] = await bot.get_updates(timeout=0)
    assert update.message is not None and update.message.refunded_payment is not None
    refund = update.message.refunded_payment
    assert (refund.telegram_payment_charge_id, refund.total_amount, refund.currency) == (charge_id, 50, "XTR")
    assert server.refunded(charge_id)
    with pytest.raises(TelegramBadRequest, match="Bad Request: CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(USER.id, charge_id)
    with pytest.raises(TelegramBadRequest, match="Bad Request: CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(USER.id, "stxUnknown")
    with pytest.raises(TelegramBadRequest, match="Bad Request: CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(USER.id + 1, charge_id)  # someone else's charge


async def test_commands_menu_button_chat_and_unknown_methods(server: FakeTelegramServer, bot: Bot) -> None:
    await bot.set_my_commands([BotCommand(command="start", description="Start")], language_code="en")
    commands = await bot.get_my_commands(language_code="en")
    await bot.delete_my_commands(language_code="en")
    chat = await bot.get_chat(USER.id)
    await bot.send_chat_action(USER.id, "typing")
    assert await bot(SetMyDescription(description="Aisha"))

    assert [c.command for c in commands] == ["start"]
    assert server.my_commands(language_code="en") == []
    assert chat.id == USER.id and chat.type == "private"
    assert server.calls_of("setMyDescription")[0].params == {"description": "Aisha"}
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Bad Command", description="x")])


async def test_wait_for_call_walks_through_calls_in_order(server: FakeTelegramServer, bot: Bot) -> None:
    await bot.send_message(USER.id, "one")
    await bot.send_message(USER.id, "two")
    await bot.send_message(USER.id, "three")

    first = await server.wait_for_call("sendMessage")
    third = await server.wait_for_call("sendmessage", lambda call: call.params["text"] == "three")
    later = asyncio.create_task(server.wait_for_call("sendMessage"))
    await asyncio.sleep(0)
    await bot.send_message(USER.id, "four")

    assert first.params["text"] == "one"
    assert third.params["text"] == "three"
    assert (await asyncio.wait_for(later, 2)).params["text"] == "four"
    with pytest.raises(TimeoutError, match="sendMessage"):
        await server.wait_for_call("sendMessage", timeout=0.05)
    server.clear_calls()
    assert server.calls == []


async def test_json_and_urlencoded_requests(server: FakeTelegramServer) -> None:
    url = f"{server.base_url}/bot{server.token}/SENDMESSAGE"
    async with aiohttp.ClientSession() as client:
        async with client.post(url, json={"chat_id": 7, "text": "json"}) as response:
            assert response.status == 200
            body = await response.json()
        form = {
            "chat_id": "7",
            "text": "123",
            "reply_markup": '{"inline_keyboard": [[{"text": "a", "url": "https://a.b"}]]}',
        }
        async with client.post(url, data=form) as response:
            second = await response.json()
        async with client.get(f"{server.base_url}/bot{server.token}/getMe") as response:
            me = await response.json()

    assert body["ok"] and body["result"]["text"] == "json"
    assert second["result"]["text"] == "123"  # text stays a string even when it looks like JSON
    assert second["result"]["reply_markup"]["inline_keyboard"][0][0]["url"] == "https://a.b"
    assert me["result"]["username"] == "aisha_test_bot"
    assert [call.method for call in server.calls] == ["sendMessage", "sendMessage", "getMe"]


async def test_webhook_delivery_with_secret_and_reply_in_body(server: FakeTelegramServer, bot: Bot) -> None:
    received: list[tuple[dict[str, object], str | None]] = []

    async def webhook(request: web.Request) -> web.Response:
        update = await request.json()
        received.append((update, request.headers.get("X-Telegram-Bot-Api-Secret-Token")))
        chat_id = update["message"]["chat"]["id"]
        # aiogram's "reply into webhook": the method call rides in the response body.
        return web.json_response({"method": "sendMessage", "chat_id": chat_id, "text": "via reply"})

    app = web.Application()
    app.router.add_post("/hook", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await bot.set_webhook(
            f"http://127.0.0.1:{port}/hook", secret_token="s3cret_-", drop_pending_updates=True
        )
        info = await bot.get_webhook_info()
        with pytest.raises(TelegramConflictError):
            await bot.get_updates(timeout=0)

        status = await server.deliver(server.message_update(USER, "hello"))

        call = await server.wait_for_call("sendMessage")
        assert status == 200
        assert info.url.endswith("/hook")
        assert received[0][0]["message"]["text"] == "hello"  # type: ignore[index]
        assert received[0][1] == "s3cret_-"
        assert call.params == {"chat_id": USER.id, "text": "via reply"}
        assert [m["text"] for m in server.chat_messages(USER.id)] == ["hello", "via reply"]

        await bot.delete_webhook()
        assert await server.deliver(server.message_update(USER, "queued")) is None
        assert len(await bot.get_updates(timeout=0)) == 1
    finally:
        await runner.cleanup()


async def test_aiogram_webhook_handler_with_reply_in_body(server: FakeTelegramServer, bot: Bot) -> None:
    dispatcher = Dispatcher()

    @dispatcher.message()
    async def reply(message: Message) -> object:
        # Returning a method makes aiogram answer it inside the webhook response (multipart).
        return message.answer_photo(BufferedInputFile(png(2, 2), "r.png"), caption=f"re: {message.text}")

    app = web.Application()
    SimpleRequestHandler(dispatcher, bot, handle_in_background=False, secret_token="right").register(
        app, "/tg"
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/tg"
    try:
        assert await server.post_webhook(url, server.message_update(USER, "x"), secret="wrong") == 401
        assert await server.post_webhook(url, server.message_update(USER, "hi"), secret="right") == 200

        call = await server.wait_for_call("sendPhoto")
        assert call.params["caption"] == "re: hi"
        assert list(call.files.values()) == [png(2, 2)]
        assert server.chat_messages(USER.id)[-1]["caption"] == "re: hi"
    finally:
        await runner.cleanup()


def test_image_size_reads_headers() -> None:
    jpeg = (
        b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 480, 640) + b"\x03"
    )
    gif = b"GIF89a" + struct.pack("<HH", 10, 20)

    assert image_size(png(300, 200)) == (300, 200)
    assert image_size(jpeg) == (640, 480)
    assert image_size(gif) == (10, 20)
    assert image_size(b"not an image") is None


async def test_keep_calls_forgets_the_oldest_and_waiting_still_walks_in_order() -> None:
    async with FakeTelegramServer(keep_calls=3) as fake:
        bot = make_bot(fake)
        try:
            for n in range(5):
                await bot.send_message(1, f"m{n}")
            assert (await fake.wait_for_call("sendMessage")).params["text"] == "m0"
            await bot.send_message(1, "m5")  # the 6th call: the oldest 3 are forgotten
            assert [c.params["text"] for c in fake.calls] == ["m3", "m4", "m5"]
            # The cursor stood after m0, which is gone: the next one still there comes next.
            assert (await fake.wait_for_call("sendMessage")).params["text"] == "m3"
        finally:
            await bot.session.close()


# --- what the real Bot API refuses, refused here with its own words -------------------------------


@pytest.mark.parametrize(
    ("html", "description"),
    [
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ("<3", "Unclosed start tag at byte offset 0"),
        ("Hi <user>", 'Unsupported start tag "user" at byte offset 3'),
        ("<b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("Ё <b>x</b>>", None),  # a bare ">" is text
        ("Tom & Jerry &amp &copy;", None),  # so is a "&" that starts no known reference
    ],
)
async def test_html_is_refused_exactly_as_telegram_refuses_it(
    server: FakeTelegramServer, html: str, description: str | None
) -> None:
    bot = make_bot(server, default=DefaultBotProperties(parse_mode="HTML"))
    try:
        if description is None:
            message = await bot.send_message(USER.id, html)
            assert message.text is not None and "<b>" not in message.text
            return
        with pytest.raises(TelegramBadRequest) as refused:
            await bot.send_message(USER.id, html)
        assert refused.value.message == f"Bad Request: can't parse entities: {description}"
        call = server.calls_of("sendMessage")[-1]
        assert call.failed and not call.expected
        assert server.unexpected_refusals() == [call]
    finally:
        await bot.session.close()


async def test_text_and_caption_limits_count_utf16_units_after_parsing(
    server: FakeTelegramServer, bot: Bot
) -> None:
    await bot.send_message(USER.id, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")  # tags don't count
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: message is too long$"):
        await bot.send_message(USER.id, "😀" * 2049)  # 2049 characters, 4098 UTF-16 units
    photo = BufferedInputFile(png(2, 2), "p.png")
    await bot.send_photo(USER.id, photo, caption="&amp;" * 1024, parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: message caption is too long$"):
        await bot.send_photo(USER.id, photo, caption="😀" * 513)
    sent = await bot.send_message(USER.id, "short")
    with pytest.raises(TelegramBadRequest, match="MESSAGE_TOO_LONG"):
        await bot.edit_message_text("x" * 4097, chat_id=USER.id, message_id=sent.message_id)
    assert [c.description for c in server.unexpected_refusals()] == [
        "Bad Request: message is too long",
        "Bad Request: message caption is too long",
        "Bad Request: MESSAGE_TOO_LONG",
    ]


@pytest.mark.parametrize(
    ("button", "description"),
    [
        ({"text": "x", "callback_data": "d" * 65}, "BUTTON_DATA_INVALID"),
        ({"text": "x", "callback_data": "ж" * 33}, "BUTTON_DATA_INVALID"),  # 66 bytes
        (
            {"text": "x", "callback_data": ""},
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
        ),
        (
            {"text": "x"},
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
        ),
        ({"text": "", "callback_data": "a"}, "inline keyboard button text must be non-empty"),
        (
            {"text": "x", "callback_data": "a", "url": "https://x.io"},
            "can't parse inline keyboard button: exactly one of the optional fields must be used, "
            "found callback_data, url",
        ),
        ("x", "can't parse inline keyboard button: InlineKeyboardButton must be an Object"),
    ],
)
async def test_inline_keyboards_are_checked_button_by_button(
    server: FakeTelegramServer, button: object, description: str
) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"chat_id": USER.id, "text": "hi", "reply_markup": {"inline_keyboard": [[button]]}}
        async with http.post(f"{server.base_url}/bot{server.token}/sendMessage", json=body) as response:
            assert response.status == 400
            assert (await response.json())["description"] == f"Bad Request: {description}"


async def test_keyboards_through_aiogram(server: FakeTelegramServer, bot: Bot) -> None:
    ok = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Buy", callback_data="b" * 64)]])
    await bot.send_message(USER.id, "64 bytes are fine", reply_markup=ok)
    too_long = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Buy", callback_data="b" * 65)]]
    )
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: BUTTON_DATA_INVALID$"):
        await bot.send_message(USER.id, "65 are not", reply_markup=too_long)
    empty = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="")]])
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: keyboard button text must be non-empty$"):
        await bot.send_message(USER.id, "menu", reply_markup=empty)
    many = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=str(n), callback_data=str(n))] for n in range(101)]
    )
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: reply markup is too long$"):
        await bot.send_message(USER.id, "too many buttons", reply_markup=many)


async def test_media_groups_take_2_to_10_items_of_kinds_that_mix(
    server: FakeTelegramServer, bot: Bot
) -> None:
    def photos(count: int) -> list[InputMediaPhoto]:
        return [InputMediaPhoto(media=BufferedInputFile(png(2, 2), f"{n}.png")) for n in range(count)]

    assert len(await bot.send_media_group(USER.id, photos(2))) == 2  # type: ignore[arg-type]
    assert len(await bot.send_media_group(USER.id, photos(10))) == 10  # type: ignore[arg-type]
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: media group must include 2-10 items$"):
        await bot.send_media_group(USER.id, photos(1))  # type: ignore[arg-type]
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: too many messages to send as an album$"):
        await bot.send_media_group(USER.id, photos(11))  # type: ignore[arg-type]
    mixed = [*photos(1), InputMediaDocument(media=BufferedInputFile(b"text", "a.txt"))]
    with pytest.raises(
        TelegramBadRequest, match=r"- Bad Request: document can't be mixed with other media types$"
    ):
        await bot.send_media_group(USER.id, mixed)  # type: ignore[arg-type]


async def test_same_edit_and_long_callback_answer_are_refused(server: FakeTelegramServer, bot: Bot) -> None:
    markup = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Go", callback_data="go")]])
    sent = await bot.send_message(USER.id, "<b>Same</b>", parse_mode="HTML", reply_markup=markup)
    with pytest.raises(TelegramBadRequest, match="- Bad Request: message is not modified: "):
        await bot.edit_message_text(
            "<b>Same</b>", chat_id=USER.id, message_id=sent.message_id, parse_mode="HTML", reply_markup=markup
        )
    # The same text without the keyboard is a change.
    await bot.edit_message_text("<b>Same</b>", chat_id=USER.id, message_id=sent.message_id, parse_mode="HTML")
    update = server.callback_update(USER, "go", message=server.chat_messages(USER.id)[-1])
    query_id = update["callback_query"]["id"]
    with pytest.raises(TelegramBadRequest, match=r"- Bad Request: MESSAGE_TOO_LONG$"):
        await bot.answer_callback_query(query_id, text="x" * 201)


# --- a refused call fails the test that made it --------------------------------------------------


async def test_wait_for_call_raises_on_a_refusal_unless_expected(
    server: FakeTelegramServer, bot: Bot
) -> None:
    with pytest.raises(TelegramBadRequest):
        await bot.send_message(USER.id, "a <b>c", parse_mode="HTML")
    with pytest.raises(RefusedCall, match="can't parse entities") as raised:
        await server.wait_for_call("sendMessage")
    assert raised.value.call.params["text"] == "a <b>c"

    server.expect_refusal("sendMessage", "message text is empty")
    with pytest.raises(TelegramBadRequest):
        await bot.send_message(USER.id, " ")
    expected = await server.wait_for_call("sendMessage")
    assert expected.failed and expected.expected

    server.fail_next("sendMessage", 400, description="Bad Request: chat not found")  # injected: expected
    with pytest.raises(TelegramBadRequest):
        await bot.send_message(USER.id, "hi")
    assert (await server.wait_for_call("sendMessage")).expected
    assert [c.params["text"] for c in server.unexpected_refusals()] == ["a <b>c"]


async def test_the_e2e_teardown_fails_a_test_whose_bot_call_was_refused(
    server: FakeTelegramServer, bot: Bot
) -> None:
    from tests.e2e.conftest import check_refusals

    await bot.send_message(USER.id, "fine")
    check_refusals(server)  # nothing refused: passes

    with pytest.raises(TelegramBadRequest):
        await bot.send_message(USER.id, "Hello, <name>!", parse_mode="HTML")
    with pytest.raises(pytest.fail.Exception) as failed:
        check_refusals(server)
    assert "1 Bot API call(s) refused" in str(failed.value)
    assert 'Unsupported start tag "name" at byte offset 7' in str(failed.value)


async def test_wait_until_handled_counts_each_delivery(server: FakeTelegramServer, bot: Bot) -> None:
    update = server.message_update(USER, "hi")
    server.queue_update(update)
    server.queue_update(update)  # Telegram sent it twice: both must be handled
    other = server.message_update(USER, "later")
    server.queue_update(other)
    waiting = asyncio.create_task(server.wait_until_handled(update, timeout=2))
    server.mark_handled(update["update_id"])
    await asyncio.sleep(0)
    assert not waiting.done()
    server.mark_handled(update["update_id"])
    await waiting
    with pytest.raises(TimeoutError, match=rf"updates \[{other['update_id']}\] were not handled"):
        await server.wait_until_handled(timeout=0.05)  # every update delivered so far
    await bot.delete_webhook(drop_pending_updates=True)  # dropped: nothing more comes of them
    await server.wait_until_handled(timeout=0.05)


_REFUSING_TESTS = """
import contextlib

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest

from tests.e2e.conftest import telegram  # noqa: F401 - the e2e fixture itself


async def send_bad_html(server):
    bot = Bot(server.token, session=AiohttpSession(api=TelegramAPIServer.from_base(server.base_url)))
    try:
        with contextlib.suppress(TelegramBadRequest):  # as a bot that swallows the error would
            await bot.send_message(1, "Hi <name>", parse_mode="HTML")
    finally:
        await bot.session.close()


async def test_refused_and_not_expected(telegram):
    await send_bad_html(telegram)


async def test_refused_as_announced(telegram):
    telegram.expect_refusal("sendMessage", "can't parse entities")
    await send_bad_html(telegram)


async def test_refused_by_injection(telegram):
    telegram.fail_next("sendMessage", 400, description="Bad Request: chat not found")
    await send_bad_html(telegram)
"""


def test_a_test_whose_bot_call_was_refused_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The e2e ``telegram`` fixture, run as pytest runs it: only the unannounced refusal fails."""
    pytester.makepyfile(test_refusals=_REFUSING_TESTS)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))  # the repository: ``tests.e2e``
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_refused_and_not_expected*",
            "*1 Bot API call(s) refused as Telegram would refuse them*",
            '*sendMessage: 400 Bad Request: can\'t parse entities: Unsupported start tag "name" at byte offset 3*',
        ]
    )


async def test_get_file_over_20_mb_is_refused_as_the_public_bot_api_does(
    server: FakeTelegramServer, bot: Bot
) -> None:
    small, _ = server.register_file(b"x" * (20 * 1024 * 1024), file_path_hint="music/ok.mp3")
    big, _ = server.register_file(b"x" * (20 * 1024 * 1024 + 1), file_path_hint="music/big.mp3")
    server.expect_refusal("getFile", "file is too big")

    assert (await bot.get_file(small)).file_size == 20 * 1024 * 1024
    with pytest.raises(TelegramBadRequest, match="Bad Request: file is too big"):
        await bot.get_file(big)


async def test_a_local_server_answers_get_file_with_an_absolute_path_in_its_folder(tmp_path: Path) -> None:
    content = b"x" * (21 * 1024 * 1024)  # over the public API's limit: no limit here
    async with FakeTelegramServer(local_dir=tmp_path, local_server_dir="/var/lib/telegram-bot-api") as fake:
        bot = make_bot(fake)
        try:
            file_id, _ = fake.register_file(content, file_path_hint="music/long.mp3")
            file = await bot.get_file(file_id)
            assert file.file_path is not None and file.file_size == len(content)
            relative = file.file_path.removeprefix(f"/var/lib/telegram-bot-api/{fake.token}/")
            assert relative != file.file_path and relative.startswith("music/")
            assert (tmp_path / fake.token / relative).read_bytes() == content
            # A local server serves no HTTP downloads: the file is read from its folder.
            async with aiohttp.ClientSession() as http:
                response = await http.get(f"{fake.base_url}/file/bot{fake.token}/{relative}")
                assert response.status == 404
        finally:
            await bot.session.close()
    assert fake.errors == [] and fake.unexpected_refusals() == []


async def test_commands_in_a_bot_message_become_bot_command_entities(server: FakeTelegramServer) -> None:
    """As Telegram does, so a client can make them tappable; not inside code, links or paths."""
    bot = make_bot(server, default=DefaultBotProperties(parse_mode="HTML"))
    try:
        message = await bot.send_message(
            USER.id, "😀 <b>/balance</b> or /start@aisha_bot, not <code>/help</code>, 1/2, /tmp/x or a.b/c"
        )
        assert message.text is not None and message.entities is not None
        found = [(e.type, e.offset, e.length) for e in message.entities]
        assert found == [("bold", 3, 8), ("bot_command", 3, 8), ("bot_command", 15, 16), ("code", 37, 5)]
        assert message.text[3 - 1 : 3 - 1 + 8] == "/balance"  # 😀 is two UTF-16 units, one character
    finally:
        await bot.session.close()
