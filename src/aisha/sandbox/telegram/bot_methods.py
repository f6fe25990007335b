"""The fake Telegram server's other Bot API methods."""

from __future__ import annotations

import asyncio
import copy
import secrets

from aisha.sandbox.telegram.constants import (
    _CALLBACK_ANSWER_LIMIT,
    _CHAT_ACTIONS,
    _COMMAND_RE,
    _MEDIA_KINDS,
    _SECRET_TOKEN_RE,
    _STALE_QUERY,
    JsonDict,
)
from aisha.sandbox.telegram.methods import MessageMethods
from aisha.sandbox.telegram.models import WebhookConfig, _ApiError, _bad_request, _Handler, _Request
from aisha.sandbox.telegram.params import _bool, _chat_id, _commands_key, _float, _int, _str, _update_allowed


class BotMethods(MessageMethods):
    """The other Bot API methods: identity, polling and webhooks, callbacks, payments, commands
    and menus."""

    def _method_table(self) -> dict[str, tuple[str, _Handler]]:
        """Every Bot API method the fake answers, by lower-case name: (its spelling, its handler)."""
        handlers: dict[str, _Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "copyMessage": self._copy_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageMedia": self._edit_message_media,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "sendMediaGroup": self._send_media_group,
            "getFile": self._get_file,
            "sendInvoice": self._send_invoice,
            "createInvoiceLink": self._create_invoice_link,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
            "setMyCommands": self._set_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getMyCommands": self._get_my_commands,
            "setChatMenuButton": self._set_chat_menu_button,
            "getChatMenuButton": self._get_chat_menu_button,
            "getChat": self._get_chat,
            "close": self._return_true,
            "logOut": self._return_true,
        }
        for kind in _MEDIA_KINDS:
            handlers["send" + "".join(part.title() for part in kind.split("_"))] = self._media_sender(kind)
        return {name.lower(): (name, handler) for name, handler in handlers.items()}

    async def _return_true(self, req: _Request) -> bool:
        return True

    async def _get_me(self, req: _Request) -> JsonDict:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, req: _Request) -> list[JsonDict]:
        params = req.params
        if self._webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int(params, "offset", 0)
        limit = min(max(_int(params, "limit", 100), 1), 100)
        timeout = max(_float(params, "timeout", 0.0), 0.0)
        if "allowed_updates" in params:
            allowed = params["allowed_updates"]
            self._allowed_updates = tuple(str(kind) for kind in allowed) if allowed else None
        if offset < 0:
            self._updates = self._updates[offset:]
        elif offset > 0:
            self._updates = [update for update in self._updates if int(update["update_id"]) >= offset]
        # The newest poll wins; an older one still waiting gets 409 like on Telegram.
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_pollers()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._closing:
                return []
            if generation != self._poll_generation:
                raise _ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            # Telegram drops updates of types the bot did not ask for: nothing more comes of them.
            for dropped in [u for u in self._updates if not _update_allowed(u, self._allowed_updates)]:
                self._updates.remove(dropped)
                self.mark_handled(int(dropped["update_id"]))
            if self._updates:
                return copy.deepcopy(self._updates[:limit])
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            event = self._update_event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return []

    async def _set_webhook(self, req: _Request) -> bool:
        params = req.params
        url = _str(params, "url", "")
        if not url:
            self._webhook = None
            return True
        if not url.startswith(("http://", "https://")):
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN_RE.match(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        self._webhook = WebhookConfig(
            url=url,
            secret_token=None if secret is None else str(secret),
            allowed_updates=tuple(str(kind) for kind in allowed) if allowed else None,
            max_connections=_int(params, "max_connections", 40),
        )
        self._webhook_error = None
        if _bool(params, "drop_pending_updates"):
            self._drop_pending_updates()
        self._wake_pollers()
        return True

    async def _delete_webhook(self, req: _Request) -> bool:
        self._webhook = None
        self._webhook_error = None
        if _bool(req.params, "drop_pending_updates"):
            self._drop_pending_updates()
        return True

    async def _get_webhook_info(self, req: _Request) -> JsonDict:
        webhook = self._webhook
        info: JsonDict = {
            "url": webhook.url if webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if webhook is not None:
            info["max_connections"] = webhook.max_connections
            if webhook.allowed_updates is not None:
                info["allowed_updates"] = list(webhook.allowed_updates)
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    async def _answer_callback_query(self, req: _Request) -> bool:
        query_id = _str(req.params, "callback_query_id", "")
        if self._open_callback_queries.pop(query_id, None) is None:
            raise _ApiError(400, _STALE_QUERY)
        text = req.params.get("text")
        if text is not None and len(str(text)) > _CALLBACK_ANSWER_LIMIT:
            raise _bad_request("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = dict(req.params)
        return True

    async def _send_chat_action(self, req: _Request) -> bool:
        _chat_id(req.params)
        if _str(req.params, "action", "") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    def _invoice_params(self, params: JsonDict) -> JsonDict:
        for key in ("title", "description", "payload", "currency"):
            if not params.get(key):
                raise _bad_request(f"{key} is empty")
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise _bad_request("prices are empty")
        currency = str(params["currency"])
        if currency == "XTR" and (len(prices) != 1 or params.get("provider_token")):
            # Stars invoices take exactly one price and no provider token.
            raise _bad_request("STARS_INVOICE_INVALID")
        total = sum(int(price["amount"]) for price in prices)
        if total <= 0:
            raise _bad_request("CURRENCY_TOTAL_AMOUNT_INVALID")
        return {
            "title": str(params["title"]),
            "description": str(params["description"]),
            "start_parameter": str(params.get("start_parameter") or ""),
            "currency": currency,
            "total_amount": total,
        }

    async def _send_invoice(self, req: _Request) -> JsonDict:
        chat_id = _chat_id(req.params)
        invoice = self._invoice_params(req.params)
        message = self._new_bot_message(chat_id, req.params, {"invoice": invoice})
        self._invoice_payloads[(chat_id, message["message_id"])] = str(req.params["payload"])
        return message

    async def _create_invoice_link(self, req: _Request) -> str:
        self._invoice_params(req.params)
        link = f"https://t.me/${secrets.token_urlsafe(12)}"
        self._invoice_links[link] = dict(req.params)
        return link

    async def _answer_pre_checkout_query(self, req: _Request) -> bool:
        query_id = _str(req.params, "pre_checkout_query_id", "")
        if query_id not in self._open_pre_checkouts:
            raise _ApiError(400, _STALE_QUERY)
        ok = _bool(req.params, "ok")
        if not ok and not req.params.get("error_message"):
            raise _bad_request("error_message is empty")
        del self._open_pre_checkouts[query_id]
        self.pre_checkout_answers[query_id] = {"ok": ok, "error_message": req.params.get("error_message")}
        return True

    async def _refund_star_payment(self, req: _Request) -> bool:
        user_id = _int(req.params, "user_id")
        charge = self._charges.get(_str(req.params, "telegram_payment_charge_id", ""))
        if charge is None or charge.user_id != user_id:
            raise _bad_request("CHARGE_NOT_FOUND")
        if charge.refunded:
            raise _bad_request("CHARGE_ALREADY_REFUNDED")
        charge.refunded = True
        return True

    async def _set_my_commands(self, req: _Request) -> bool:
        commands = req.params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad_request("commands must be a list of at most 100 BotCommand")
        for command in commands:
            name = str(command.get("command", "")) if isinstance(command, dict) else ""
            description = str(command.get("description", "")) if isinstance(command, dict) else ""
            if not _COMMAND_RE.match(name) or not 1 <= len(description) <= 256:
                raise _bad_request("BOT_COMMAND_INVALID")
        key = _commands_key(req.params.get("scope"), _str(req.params, "language_code", ""))
        self._commands[key] = [{"command": c["command"], "description": c["description"]} for c in commands]
        return True

    async def _delete_my_commands(self, req: _Request) -> bool:
        key = _commands_key(req.params.get("scope"), _str(req.params, "language_code", ""))
        self._commands.pop(key, None)
        return True

    async def _get_my_commands(self, req: _Request) -> list[JsonDict]:
        key = _commands_key(req.params.get("scope"), _str(req.params, "language_code", ""))
        return copy.deepcopy(self._commands.get(key, []))

    async def _set_chat_menu_button(self, req: _Request) -> bool:
        chat_id = _chat_id(req.params) if req.params.get("chat_id") is not None else None
        button = req.params.get("menu_button")
        if button is None:
            self._menu_buttons.pop(chat_id, None)
        elif isinstance(button, dict) and button.get("type") in ("commands", "web_app", "default"):
            self._menu_buttons[chat_id] = button
        else:
            raise _bad_request("can't parse menu button")
        return True

    async def _get_chat_menu_button(self, req: _Request) -> JsonDict:
        chat_id = _chat_id(req.params) if req.params.get("chat_id") is not None else None
        return copy.deepcopy(
            self._menu_buttons.get(chat_id) or self._menu_buttons.get(None) or {"type": "default"}
        )

    async def _get_chat(self, req: _Request) -> JsonDict:
        chat = self._chat_dict(_chat_id(req.params))
        return {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": True,
                "limited_gifts": True,
                "unique_gifts": True,
                "premium_subscription": True,
                "gifts_from_channels": True,
            },
        }
