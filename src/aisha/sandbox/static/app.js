/* Aisha sandbox page: a Telegram-like chat with the bot and the operator's panel.
 *
 * Plain JS, no build step, no library. Everything the bot or the user wrote reaches the DOM through
 * textContent / createTextNode / attributes: never through innerHTML, so no text can inject markup.
 * The server's API is described in docs/sandbox-api.md (GET /api/chat long poll, POST /api/message,
 * /api/upload, /api/press, /api/pay, GET /api/panel, GET /api/files/{file_id}).
 */
"use strict";

(function () {
  // ------------------------------------------------------------------------------ UI strings

  const STRINGS = {
    en: {
      bot: "bot",
      sandbox: "sandbox",
      operator_view: "Operator view",
      reconnecting: "Reconnecting…",
      empty_chat: "No messages yet. Send /start to begin.",
      menu: "Menu",
      attach: "Attach",
      attach_photo: "🖼 Photo or photos",
      attach_file: "📄 File",
      attach_audio: "🎵 Audio",
      attach_video: "🎬 Video",
      attach_voice: "🎙 Voice message from a file",
      recording_hint: "Recording… release or click the microphone to send",
      cancel: "Cancel",
      placeholder: "Message",
      keyboard: "Keyboard",
      record: "Record a voice message",
      send: "Send",
      close: "Close",
      balance: "Balance",
      on_hold: "On hold",
      ledger: "Ledger",
      operations: "Operations",
      raw_entries: "Raw entries",
      state_pending: "in progress",
      state_refunded: "refunded",
      jobs: "Jobs",
      calls: "Calls to services",
      all: "All",
      open_original: "Open the original",
      edited: "edited",
      nothing_yet: "Nothing yet",
      photo: "Photo",
      video: "Video",
      voice: "Voice message",
      audio: "Audio",
      document: "File",
      sticker: "Sticker",
      animation: "GIF",
      video_note: "Video message",
      invoice: "Invoice",
      you: "You",
      pay: "Pay ⭐ {amount}",
      paid: "Paid ✓",
      paying: "Paying…",
      payment_ok: "Payment successful",
      payment_refused: "Payment declined: {error}",
      you_paid: "You paid ⭐ {amount}",
      you_paid_for: "You paid ⭐ {amount} for “{title}”",
      uploading: "Uploading {count} file(s)…",
      upload_failed: "Upload failed: {error}",
      send_failed: "Not sent: {error}",
      press_failed: "The button did not work: {error}",
      no_answer: "The bot did not answer the button.",
      not_supported: "This kind of button does not work in the sandbox.",
      copied: "Copied to the clipboard",
      no_recorder:
        "Recording is not available in this browser (it needs a microphone and http://127.0.0.1 or localhost). Upload a voice file instead.",
      mic_denied: "No access to the microphone: {error}",
      too_short: "Too short: hold the microphone a little longer.",
      balance_after: "→ {balance}",
      job_avatar: "Avatar: {name}",
      job_charged: "charged {amount}",
      job_on_hold: "{amount} on hold",
      job_refunded: "{amount} refunded",
      job_request: "provider id",
      seconds: "{n} s",
      request: "Request",
      response: "Response · HTTP {status}",
      not_answered: "No answer (yet)",
      loading: "Loading…",
      b: "B",
      kb: "KB",
      mb: "MB",
    },
    ru: {
      bot: "бот",
      sandbox: "песочница",
      operator_view: "Панель оператора",
      reconnecting: "Переподключение…",
      empty_chat: "Сообщений пока нет. Отправьте /start, чтобы начать.",
      menu: "Меню",
      attach: "Прикрепить",
      attach_photo: "🖼 Фото (одно или несколько)",
      attach_file: "📄 Файл",
      attach_audio: "🎵 Аудио",
      attach_video: "🎬 Видео",
      attach_voice: "🎙 Голосовое из файла",
      recording_hint: "Запись… отпустите или нажмите на микрофон, чтобы отправить",
      cancel: "Отмена",
      placeholder: "Сообщение",
      keyboard: "Клавиатура",
      record: "Записать голосовое сообщение",
      send: "Отправить",
      close: "Закрыть",
      balance: "Баланс",
      on_hold: "В резерве",
      ledger: "Проводки",
      operations: "Операции",
      raw_entries: "Все проводки",
      state_pending: "в работе",
      state_refunded: "возвращено",
      jobs: "Задачи",
      calls: "Вызовы сервисов",
      all: "Все",
      open_original: "Открыть оригинал",
      edited: "изменено",
      nothing_yet: "Пока ничего",
      photo: "Фотография",
      video: "Видео",
      voice: "Голосовое сообщение",
      audio: "Аудио",
      document: "Файл",
      sticker: "Стикер",
      animation: "GIF",
      video_note: "Видеосообщение",
      invoice: "Счёт",
      you: "Вы",
      pay: "Оплатить ⭐ {amount}",
      paid: "Оплачено ✓",
      paying: "Оплата…",
      payment_ok: "Оплата прошла",
      payment_refused: "Оплата отклонена: {error}",
      you_paid: "Вы заплатили ⭐ {amount}",
      you_paid_for: "Вы заплатили ⭐ {amount} за «{title}»",
      uploading: "Загрузка файлов: {count}…",
      upload_failed: "Не загрузилось: {error}",
      send_failed: "Не отправлено: {error}",
      press_failed: "Кнопка не сработала: {error}",
      no_answer: "Бот не ответил на нажатие.",
      not_supported: "Такая кнопка в песочнице не работает.",
      copied: "Скопировано",
      no_recorder:
        "Запись в этом браузере недоступна (нужен микрофон и адрес http://127.0.0.1 или localhost). Загрузите голосовое из файла.",
      mic_denied: "Нет доступа к микрофону: {error}",
      too_short: "Слишком коротко: держите микрофон чуть дольше.",
      balance_after: "→ {balance}",
      job_avatar: "Аватар: {name}",
      job_charged: "списано {amount}",
      job_on_hold: "{amount} в резерве",
      job_refunded: "{amount} возвращено",
      job_request: "id у провайдера",
      seconds: "{n} с",
      request: "Запрос",
      response: "Ответ · HTTP {status}",
      not_answered: "Ответа нет (пока)",
      loading: "Загрузка…",
      b: "Б",
      kb: "КБ",
      mb: "МБ",
    },
  };

  let lang = "en";

  /** A UI string in the user's language, with {name} placeholders filled in (as plain text). */
  function tr(key, vars) {
    const table = STRINGS[lang] || STRINGS.en;
    let text = key in table ? table[key] : STRINGS.en[key] || key;
    for (const [name, value] of Object.entries(vars || {})) {
      text = text.split("{" + name + "}").join(String(value));
    }
    return text;
  }

  /** Static elements carry data-i18n* attributes naming their string. */
  function applyStaticStrings() {
    document.documentElement.lang = lang;
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = tr(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-title]")) node.title = tr(node.dataset.i18nTitle);
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
      node.placeholder = tr(node.dataset.i18nPlaceholder);
    }
  }

  function setLanguage(code) {
    const next = String(code || "").toLowerCase().startsWith("ru") ? "ru" : "en";
    if (next === lang) return false;
    lang = next;
    applyStaticStrings();
    return true;
  }

  // ------------------------------------------------------------------------------ small helpers

  const $ = (selector) => document.querySelector(selector);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Creates an element; `props` sets properties (className, textContent, href...) or, for
   * keys starting with "data-" / "aria-", attributes. Children are nodes or strings (as text). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child); // a string becomes a text node: never parsed as HTML
    }
    return node;
  }

  function fileUrl(fileId, download) {
    return "/api/files/" + encodeURIComponent(fileId) + (download ? "?download=1" : "");
  }

  function formatSize(bytes) {
    if (typeof bytes !== "number") return "";
    if (bytes < 1024) return bytes + " " + tr("b");
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " " + tr("kb");
    return (bytes / 1024 / 1024).toFixed(1) + " " + tr("mb");
  }

  function formatDuration(seconds) {
    const s = Math.max(0, Math.round(seconds || 0));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  /** Dates from the server come as Unix seconds, milliseconds or ISO strings. */
  function toDate(value) {
    if (value === undefined || value === null || value === "") return null;
    if (typeof value === "number") return new Date(value < 1e12 ? value * 1000 : value);
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function formatTime(value) {
    const date = toDate(value);
    return date ? date.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" }) : "";
  }

  function formatDay(value) {
    const date = toDate(value);
    return date ? date.toLocaleDateString(lang, { day: "numeric", month: "long", year: "numeric" }) : "";
  }

  /** Only links a user could follow in Telegram; anything else (javascript:, data:) is not a link. */
  function safeUrl(url) {
    try {
      const parsed = new URL(url, window.location.href);
      return ["http:", "https:", "mailto:", "tel:", "tg:"].includes(parsed.protocol) ? parsed.href : null;
    } catch (_error) {
      return null;
    }
  }

  // ------------------------------------------------------------------------------ server calls

  class ApiError extends Error {}

  /** JSON in, JSON out; a non-2xx answer becomes an ApiError with the server's `error` text. */
  async function api(path, options) {
    const response = await fetch(path, Object.assign({ cache: "no-store" }, options || {}));
    let body = null;
    try {
      body = await response.json();
    } catch (_error) {
      body = null;
    }
    if (!response.ok) {
      throw new ApiError((body && body.error) || "HTTP " + response.status);
    }
    return body || {};
  }

  function postJson(path, payload) {
    return api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  // ------------------------------------------------------------------------------ toast & dialogs

  let toastTimer = null;

  function toast(text) {
    const node = $("#toast");
    node.textContent = text;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (node.hidden = true), Math.min(8000, 2500 + text.length * 40));
  }

  function showAlert(text) {
    $("#alert-text").textContent = text;
    $("#alert").hidden = false;
    $("#alert-ok").focus();
  }

  function closeOverlays() {
    $("#alert").hidden = true;
    closeLightbox();
  }

  function openLightbox(fileId) {
    $("#lightbox-image").src = fileUrl(fileId);
    $("#lightbox-open").href = fileUrl(fileId);
    $("#lightbox").hidden = false;
  }

  function closeLightbox() {
    $("#lightbox").hidden = true;
    $("#lightbox-image").removeAttribute("src");
  }

  // ------------------------------------------------------------------------------ entities

  /** Text with Bot API entities as DOM nodes.
   *
   * Entity offsets and lengths are in UTF-16 code units. JS strings are UTF-16 too, so
   * String.prototype.slice cuts at exactly those offsets, emoji (surrogate pairs) included;
   * iterating by code points (Array.from, for...of) would shift everything after an emoji.
   */
  function renderEntities(text, entities) {
    const fragment = document.createDocumentFragment();
    const list = (Array.isArray(entities) ? entities : [])
      .filter((e) => e && Number.isInteger(e.offset) && e.length > 0 && e.offset < text.length)
      .map((e) => Object.assign({}, e, { end: Math.min(e.offset + e.length, text.length) }))
      .sort(byPosition);
    appendRange(fragment, text, 0, text.length, list);
    return fragment;
  }

  function byPosition(a, b) {
    return a.offset - b.offset || b.end - a.end; // outer (longer) entities first
  }

  /** Appends text[start:end) to parent, wrapping each entity and nesting the ones inside it.
   * An entity that crosses its parent's end is split in two, as HTML needs proper nesting. */
  function appendRange(parent, text, start, end, entities) {
    let position = start;
    let rest = entities.slice();
    while (rest.length) {
      const entity = rest.shift();
      if (entity.offset < position) continue;
      const inner = [];
      const later = [];
      for (const other of rest) {
        if (other.offset >= entity.end) {
          later.push(other);
          continue;
        }
        inner.push(Object.assign({}, other, { end: Math.min(other.end, entity.end) }));
        if (other.end > entity.end) later.push(Object.assign({}, other, { offset: entity.end }));
      }
      later.sort(byPosition);
      const block = BLOCK_ENTITIES.has(entity.type);
      let before = text.slice(position, entity.offset);
      if (block) before = before.replace(/\n$/, ""); // the block breaks the line itself
      appendText(parent, before);
      const { outer, content } = entityNode(entity, text.slice(entity.offset, entity.end));
      appendRange(content, text, entity.offset, entity.end, inner);
      parent.append(outer);
      position = entity.end;
      if (block && text[position] === "\n" && position < end) position += 1;
      rest = later;
    }
    appendText(parent, text.slice(position, end));
  }

  const BLOCK_ENTITIES = new Set(["pre", "blockquote", "expandable_blockquote"]);

  function appendText(parent, text) {
    if (text) parent.append(text);
  }

  /** The element for one entity: `outer` goes into the parent, the text goes into `content`. */
  function entityNode(entity, covered) {
    const plain = (node) => ({ outer: node, content: node });
    const link = (href) => {
      const safe = safeUrl(href);
      return plain(safe ? el("a", { href: safe, target: "_blank", rel: "noopener noreferrer" }) : el("span"));
    };
    switch (entity.type) {
      case "bold":
        return plain(el("strong"));
      case "italic":
        return plain(el("em"));
      case "underline":
        return plain(el("u"));
      case "strikethrough":
        return plain(el("s"));
      case "code":
        return plain(el("code"));
      case "pre": {
        const code = el("code", { className: entity.language ? "language-" + entity.language : "" });
        return { outer: el("pre", {}, code), content: code };
      }
      case "text_link":
        return link(entity.url || "");
      case "url":
        return link(/^[a-z][a-z0-9+.-]*:/i.test(covered) ? covered : "http://" + covered);
      case "email":
        return link("mailto:" + covered);
      case "phone_number":
        return link("tel:" + covered.replace(/[^+\d]/g, ""));
      case "mention":
        return link("https://t.me/" + covered.replace(/^@/, ""));
      case "spoiler": {
        const node = el("span", { className: "spoiler", title: "" });
        node.addEventListener("click", () => node.classList.add("revealed"));
        return plain(node);
      }
      case "blockquote":
      case "expandable_blockquote":
        return plain(el("blockquote"));
      case "bot_command": {
        // As in Telegram, tapping a command sends it.
        const node = el("span", { className: "command-link", "data-command": covered });
        node.addEventListener("click", () => sendText(covered.split("@")[0]));
        return plain(node);
      }
      case "text_mention":
        return plain(el("strong"));
      default:
        return plain(el("span", { className: "entity-" + String(entity.type).replace(/[^a-z_]/g, "") }));
    }
  }

  // ------------------------------------------------------------------------------ chat state

  const state = {
    version: null, // the chat version we have; null = ask for the chat at once
    chat: null,
    rendered: new Map(), // key -> {signature, node}: only changed messages are rebuilt
    paidInvoices: new Set(),
    stickToBottom: true,
    keyboardHidden: false,
    keyboardSignature: "",
  };

  const MEDIA_KINDS = ["photo", "video", "animation", "video_note", "voice", "audio", "document", "sticker"];

  function isOutgoing(message) {
    if (typeof message.outgoing === "boolean") return message.outgoing;
    const user = state.chat && state.chat.user;
    return Boolean(user && message.from && message.from.id === user.id);
  }

  function mediaKind(message) {
    return MEDIA_KINDS.find((kind) => message[kind]) || null;
  }

  /** Consecutive messages with one media_group_id are one album, as Telegram shows them. */
  function groupAlbums(messages) {
    const groups = [];
    for (const message of messages) {
      const last = groups[groups.length - 1];
      const group = message.media_group_id;
      if (last && group && last[0].media_group_id === group) last.push(message);
      else groups.push([message]);
    }
    return groups;
  }

  /** Which invoice messages a later successful_payment paid (the newest unpaid one of that amount).
   * The Bot API does not link the two, so this is worked out from the chat itself and survives
   * a reload. */
  function matchPayments(messages) {
    const paid = new Map(); // invoice message_id -> payment message
    const titles = new Map(); // payment message_id -> invoice title
    const unpaid = [];
    for (const message of messages) {
      if (message.invoice) unpaid.push(message);
      const payment = message.successful_payment;
      if (!payment) continue;
      for (let i = unpaid.length - 1; i >= 0; i--) {
        if (unpaid[i].invoice.total_amount === payment.total_amount) {
          paid.set(unpaid[i].message_id, message);
          titles.set(message.message_id, unpaid[i].invoice.title);
          unpaid.splice(i, 1);
          break;
        }
      }
    }
    return { paid, titles };
  }

  // ------------------------------------------------------------------------------ rendering messages

  function applyChat(data) {
    state.chat = data;
    state.version = data.version;
    const languageChanged = setLanguage(data.user && data.user.language_code);
    if (languageChanged) state.rendered.clear();
    if (data.bot && data.bot.first_name) {
      $("#bot-name").textContent = data.bot.first_name;
      $("#bot-avatar").textContent = data.bot.first_name.slice(0, 1);
      document.title = data.bot.first_name + " · sandbox";
    }
    renderMessages(Array.isArray(data.messages) ? data.messages : []);
    renderReplyKeyboard(data.reply_keyboard || null);
    renderCommands(Array.isArray(data.commands) ? data.commands : []);
    if (state.stickToBottom) scrollToBottom();
  }

  function renderMessages(messages) {
    const container = $("#messages");
    const payments = matchPayments(messages);
    const wanted = [];
    let lastDay = "";
    for (const group of groupAlbums(messages)) {
      const day = formatDay(group[0].date);
      if (day && day !== lastDay) {
        wanted.push(reuse("day:" + day, day, () => el("div", { className: "date-separator" }, day)));
        lastDay = day;
      }
      const ids = group.map((m) => m.message_id);
      const paidBy = group.map((m) => (payments.paid.has(m.message_id) ? 1 : 0)).join("");
      const title = payments.titles.get(group[0].message_id) || "";
      const signature = JSON.stringify(group) + paidBy + title;
      wanted.push(
        reuse("m:" + ids.join(","), signature, () =>
          group.length > 1 ? renderAlbum(group) : renderMessage(group[0], payments)
        )
      );
    }
    const placeholder = $("#empty-chat");
    placeholder.hidden = messages.length > 0;
    syncChildren(container, [placeholder, ...wanted]);
    const keep = new Set(wanted);
    for (const [key, entry] of state.rendered) if (!keep.has(entry.node)) state.rendered.delete(key);
    if (state.stickToBottom) scrollToBottom();
  }

  /** The node for `key`: the one on the page if its content is unchanged, else a new one. */
  function reuse(key, signature, build) {
    const existing = state.rendered.get(key);
    if (existing && existing.signature === signature) return existing.node;
    const node = build();
    state.rendered.set(key, { signature, node });
    return node;
  }

  /** Makes container's children exactly `nodes`, touching only what changed: moving an element
   * that is already in place would stop a voice message that is playing. */
  function syncChildren(container, nodes) {
    nodes.forEach((node, index) => {
      const current = container.children[index];
      if (current !== node) container.insertBefore(node, current || null);
    });
    while (container.children.length > nodes.length) container.lastElementChild.remove();
  }

  function scrollToBottom() {
    const container = $("#messages");
    container.scrollTop = container.scrollHeight;
  }

  function messageShell(message, extraClass) {
    const classes = ["message"];
    if (isOutgoing(message)) classes.push("outgoing");
    if (extraClass) classes.push(extraClass);
    return el("div", {
      className: classes.join(" "),
      "data-message-id": String(message.message_id),
      "data-from": isOutgoing(message) ? "user" : "bot",
    });
  }

  function renderMessage(message, payments) {
    if (message.successful_payment) return renderPayment(message, payments);
    const node = messageShell(message);
    const kind = mediaKind(message);
    const bubble = el("div", { className: "bubble" });
    if (message.reply_to_message) bubble.append(replyQuote(message.reply_to_message));
    if (kind) bubble.append(renderMedia(kind, message));
    if (message.invoice) bubble.append(renderInvoice(message.invoice));
    const hasText = typeof message.text === "string" && message.text.length > 0;
    const hasCaption = typeof message.caption === "string" && message.caption.length > 0;
    if (hasText) bubble.append(el("div", { className: "text" }, renderEntities(message.text, message.entities)));
    if (hasCaption) {
      bubble.append(
        el("div", { className: "text caption" }, renderEntities(message.caption, message.caption_entities))
      );
    }
    const visualOnly = ["photo", "video", "animation", "video_note", "sticker"].includes(kind);
    if (visualOnly && !hasCaption && !message.reply_to_message) bubble.classList.add("media-only");
    bubble.append(meta(message));
    node.append(bubble);
    const keyboard = renderInlineKeyboard(message, payments.paid.has(message.message_id));
    if (keyboard) node.append(keyboard);
    return node;
  }

  function renderAlbum(group) {
    const first = group[0];
    const node = messageShell(first, "album-message");
    node.dataset.messageIds = group.map((m) => m.message_id).join(",");
    const bubble = el("div", { className: "bubble" });
    const visual = group.every((m) => ["photo", "video"].includes(mediaKind(m)));
    const grid = el("div", { className: visual ? "album" : "album documents" });
    let index = 0;
    for (const size of visual ? albumRows(group.length) : [group.length]) {
      const row = el("div", { className: "album-row" });
      for (const message of group.slice(index, index + size)) {
        row.append(albumItem(message, mediaKind(message), visual));
      }
      grid.append(row);
      index += size;
    }
    bubble.append(grid);
    // Telegram shows the album's one caption (the first message that has one).
    const captioned = group.find((m) => m.caption);
    if (captioned) {
      bubble.append(
        el("div", { className: "text caption" }, renderEntities(captioned.caption, captioned.caption_entities))
      );
    } else if (visual) {
      bubble.classList.add("media-only");
    }
    bubble.append(meta(group[group.length - 1]));
    node.append(bubble);
    return node;
  }

  /** How many pictures go in each row: up to 3 in one row, then 2 or 3 balanced rows
   * (10 → 3, 3, 4), like Telegram's album layout. */
  function albumRows(count) {
    if (count <= 3) return [count];
    const rows = count <= 8 ? 2 : 3;
    const base = Math.floor(count / rows);
    const extra = count % rows;
    return Array.from({ length: rows }, (_, i) => base + (i >= rows - extra ? 1 : 0));
  }

  /** One picture of an album: in a row, each keeps its proportions and all share one height. */
  function albumItem(message, kind, visual) {
    const item = el(
      "div",
      { className: "album-item", "data-message-id": message.message_id },
      renderMedia(kind, message)
    );
    if (visual) {
      const ratio = aspectRatio(message, kind);
      item.style.flex = ratio + " 1 0";
      item.style.aspectRatio = String(ratio);
    }
    return item;
  }

  function aspectRatio(message, kind) {
    const media = kind === "photo" ? message.photo[message.photo.length - 1] : message[kind];
    const ratio = media && media.width && media.height ? media.width / media.height : 1;
    return Math.min(3, Math.max(0.33, ratio)).toFixed(3);
  }

  function renderPayment(message, payments) {
    const node = messageShell(message, "service");
    const payment = message.successful_payment;
    const title = payments.titles.get(message.message_id);
    const text = title
      ? tr("you_paid_for", { amount: payment.total_amount, title })
      : tr("you_paid", { amount: payment.total_amount });
    node.append(el("div", { className: "bubble payment" }, text));
    return node;
  }

  function meta(message) {
    const node = el("span", { className: "meta" });
    if (message.edited || message.edit_date) node.append(el("span", { className: "edited" }, tr("edited")));
    node.append(el("span", { className: "time" }, formatTime(message.date)));
    if (isOutgoing(message)) node.append(el("span", { className: "ticks" }, "✓✓"));
    return node;
  }

  function replyQuote(target) {
    const user = state.chat && state.chat.user;
    const fromUser = Boolean(user && target.from && target.from.id === user.id);
    const who = fromUser ? tr("you") : (target.from && target.from.first_name) || "";
    const kind = mediaKind(target);
    const what =
      target.text || target.caption || fileName(target, kind) || (kind ? tr(kind) : target.invoice ? tr("invoice") : "");
    const node = el(
      "div",
      { className: "reply-quote" },
      el("div", { className: "who" }, who),
      el("div", { className: "what" }, what)
    );
    node.addEventListener("click", () => highlight(target.message_id));
    return node;
  }

  /** A file's own name, as Telegram's reply quote shows it ("report.pdf"), or "" when it has none. */
  function fileName(message, kind) {
    const media = kind && kind !== "photo" ? message[kind] : null;
    return (media && typeof media.file_name === "string" && media.file_name) || "";
  }

  function highlight(messageId) {
    const node = document.querySelector('.message[data-message-id="' + Number(messageId) + '"]');
    if (!node) return;
    node.scrollIntoView({ block: "center", behavior: "smooth" });
    node.classList.remove("highlight");
    void node.offsetWidth; // restart the animation
    node.classList.add("highlight");
  }

  // ------------------------------------------------------------------------------ media

  function renderMedia(kind, message) {
    const media = message[kind];
    switch (kind) {
      case "photo":
        return renderPhoto(media[media.length - 1], message.has_media_spoiler);
      case "video":
      case "animation":
        return renderVideo(media, kind);
      case "video_note":
        return el("video", { className: "round", src: fileUrl(media.file_id), controls: true, preload: "metadata" });
      case "voice":
      case "audio":
        return renderAudio(media, kind);
      case "sticker":
        return el("img", { className: "sticker", src: fileUrl(media.file_id), alt: media.emoji || tr("sticker") });
      default:
        return renderDocument(media);
    }
  }

  const PHOTO_MAX_HEIGHT = 420;

  function renderPhoto(size, spoiler) {
    const img = el("img", {
      className: "photo",
      src: fileUrl(size.file_id),
      alt: tr("photo"),
      loading: "lazy",
      "data-file-id": size.file_id,
    });
    if (size.width && size.height) {
      // Reserves the space before the bytes arrive, so the chat doesn't jump; the height follows
      // the width, so the picture keeps its proportions: as wide as it is, at most 420 px tall.
      img.width = size.width;
      img.height = size.height;
      img.style.width = Math.round(Math.min(size.width, (PHOTO_MAX_HEIGHT * size.width) / size.height)) + "px";
    } else {
      img.style.maxHeight = PHOTO_MAX_HEIGHT + "px"; // width and height auto: the browser keeps the ratio
    }
    if (spoiler) img.style.filter = "blur(24px)";
    img.addEventListener("click", () => {
      if (img.style.filter) img.style.filter = "";
      else openLightbox(size.file_id);
    });
    // Images change the height once loaded: stay at the bottom if we were there.
    img.addEventListener("load", () => state.stickToBottom && scrollToBottom());
    return img;
  }

  function renderVideo(media, kind) {
    const video = el("video", {
      src: fileUrl(media.file_id),
      controls: true,
      preload: "metadata",
      "data-file-id": media.file_id,
    });
    if (kind === "animation") {
      video.muted = true;
      video.loop = true;
      video.autoplay = true;
    }
    video.addEventListener("loadedmetadata", () => state.stickToBottom && scrollToBottom());
    return video;
  }

  function renderAudio(media, kind) {
    const title =
      kind === "audio"
        ? [media.performer, media.title].filter(Boolean).join(" — ") || media.file_name || tr("audio")
        : tr("voice") + (media.duration ? " · " + formatDuration(media.duration) : "");
    return el(
      "div",
      { className: "audio-block " + kind },
      el("div", { className: "media-title" }, title),
      el("audio", { controls: true, preload: "metadata", src: fileUrl(media.file_id), "data-file-id": media.file_id })
    );
  }

  function renderDocument(media) {
    const name = media.file_name || tr("document");
    const extension = (name.match(/\.([a-z0-9]{1,5})$/i) || [null, "file"])[1];
    return el(
      "a",
      {
        className: "document",
        href: fileUrl(media.file_id, true),
        download: name,
        "data-file-id": media.file_id,
      },
      el("span", { className: "doc-icon" }, extension),
      el(
        "span",
        { className: "doc-text" },
        el("div", { className: "doc-name" }, name),
        el("div", { className: "doc-size" }, formatSize(media.file_size))
      )
    );
  }

  function renderInvoice(invoice) {
    return el(
      "div",
      { className: "invoice" },
      el("div", { className: "invoice-title" }, invoice.title || ""),
      el("div", { className: "invoice-description" }, invoice.description || ""),
      el("div", { className: "invoice-amount" }, "⭐ " + invoice.total_amount)
    );
  }

  // ------------------------------------------------------------------------------ inline keyboards

  function renderInlineKeyboard(message, paid) {
    const markup = message.reply_markup;
    const rows = markup && Array.isArray(markup.inline_keyboard) ? markup.inline_keyboard : [];
    const hasPay = rows.some((row) => row.some((button) => button.pay));
    const container = el("div", { className: "inline-keyboard" });
    // An invoice always has a Pay button: the first one of its keyboard, or one we add.
    if (message.invoice && !hasPay) {
      container.append(el("div", { className: "inline-row" }, payButton(message, null, paid)));
    }
    for (const row of rows) {
      const line = el("div", { className: "inline-row" });
      for (const button of row) line.append(inlineButton(message, button, paid));
      container.append(line);
    }
    return container.children.length ? container : null;
  }

  function inlineButton(message, button, paid) {
    const text = String(button.text || "");
    if (button.pay) return payButton(message, text, paid);
    if (typeof button.url === "string") {
      const href = safeUrl(button.url);
      if (href) {
        return el(
          "a",
          { className: "inline-button url-button", href, target: "_blank", rel: "noopener noreferrer" },
          text,
          el("span", { className: "corner", "aria-hidden": "true" }, "↗")
        );
      }
    }
    const node = el("button", { type: "button", className: "inline-button" }, text);
    if (typeof button.callback_data === "string") {
      node.dataset.callback = button.callback_data;
      node.addEventListener("click", () => press(message.message_id, button.callback_data, node));
    } else if (button.copy_text && typeof button.copy_text.text === "string") {
      node.addEventListener("click", () => copyText(button.copy_text.text));
    } else {
      node.addEventListener("click", () => toast(tr("not_supported")));
    }
    return node;
  }

  function payButton(message, text, paid) {
    const amount = message.invoice ? message.invoice.total_amount : "";
    const node = el(
      "button",
      { type: "button", className: "inline-button pay-button" + (paid ? " paid" : ""), disabled: paid },
      paid ? tr("paid") : text || tr("pay", { amount })
    );
    node.addEventListener("click", () => pay(message.message_id, node));
    return node;
  }

  async function press(messageId, data, button) {
    button.disabled = true;
    try {
      const result = await postJson("/api/press", { message_id: messageId, data });
      const answer = result.answer;
      if (answer && answer.text) {
        if (answer.show_alert) showAlert(answer.text);
        else toast(answer.text);
      }
      if (answer && answer.url) {
        const href = safeUrl(answer.url);
        if (href) window.open(href, "_blank", "noopener");
      }
    } catch (error) {
      toast(tr("press_failed", { error: error.message }));
    } finally {
      button.disabled = false;
    }
  }

  async function pay(messageId, button) {
    button.disabled = true;
    const label = button.textContent;
    button.textContent = tr("paying");
    try {
      const result = await postJson("/api/pay", { message_id: messageId });
      if (result.ok) {
        toast(tr("payment_ok"));
        button.textContent = tr("paid");
        button.classList.add("paid");
        return;
      }
      showAlert(tr("payment_refused", { error: result.error || "?" }));
    } catch (error) {
      showAlert(tr("payment_refused", { error: error.message }));
    }
    button.textContent = label;
    button.disabled = false;
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      toast(tr("copied"));
    } catch (_error) {
      showAlert(text);
    }
  }

  // ------------------------------------------------------------------------------ reply keyboard & commands

  function renderReplyKeyboard(markup) {
    const container = $("#reply-keyboard");
    const toggle = $("#keyboard-toggle");
    const rows = markup && Array.isArray(markup.keyboard) ? markup.keyboard : [];
    const signature = JSON.stringify(markup);
    if (signature !== state.keyboardSignature) {
      // A new keyboard from the bot is shown again even if the user had hidden the old one.
      state.keyboardSignature = signature;
      state.keyboardHidden = false;
      container.replaceChildren(
        ...rows.map((row) => el("div", { className: "reply-row" }, ...row.map((b) => replyButton(b, markup))))
      );
    }
    const input = $("#composer-input");
    input.placeholder = (markup && markup.input_field_placeholder) || tr("placeholder");
    toggle.hidden = rows.length === 0;
    container.hidden = rows.length === 0 || state.keyboardHidden;
  }

  function replyButton(button, markup) {
    const text = typeof button === "string" ? button : String(button.text || "");
    const node = el("button", { type: "button", className: "reply-button" }, text);
    node.addEventListener("click", () => {
      if (markup.one_time_keyboard) {
        state.keyboardHidden = true;
        $("#reply-keyboard").hidden = true;
      }
      sendText(text);
    });
    return node;
  }

  function toggleKeyboard() {
    state.keyboardHidden = !state.keyboardHidden;
    $("#reply-keyboard").hidden = state.keyboardHidden || !$("#reply-keyboard").children.length;
  }

  let commandList = [];

  function renderCommands(commands) {
    commandList = commands.filter((c) => c && typeof c.command === "string");
    $("#commands-button").hidden = commandList.length === 0;
  }

  /** The commands menu: all commands, or those starting with what is typed after "/". */
  function openCommands(filter) {
    const menu = $("#commands-menu");
    const prefix = (filter || "").toLowerCase();
    const matching = commandList.filter((c) => c.command.toLowerCase().startsWith(prefix));
    if (!matching.length) {
      menu.hidden = true;
      return;
    }
    menu.replaceChildren(
      ...matching.map((c) => {
        const item = el(
          "button",
          { type: "button", className: "command-item", role: "menuitem", "data-command": c.command },
          el("span", { className: "command-name" }, "/" + c.command),
          el("span", { className: "command-description" }, c.description || "")
        );
        item.addEventListener("click", () => {
          closeMenus();
          $("#composer-input").value = "";
          updateComposer();
          sendText("/" + c.command);
        });
        return item;
      })
    );
    $("#attach-menu").hidden = true;
    menu.hidden = false;
  }

  function closeMenus() {
    $("#commands-menu").hidden = true;
    $("#attach-menu").hidden = true;
  }

  // ------------------------------------------------------------------------------ sending

  async function sendText(text) {
    const value = String(text || "").trim();
    if (!value) return;
    state.stickToBottom = true;
    try {
      await postJson("/api/message", { text: value });
      return true;
    } catch (error) {
      toast(tr("send_failed", { error: error.message }));
      return false;
    }
  }

  async function submitComposer(event) {
    if (event) event.preventDefault();
    const input = $("#composer-input");
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    updateComposer();
    closeMenus();
    const sent = await sendText(text);
    if (!sent && !input.value) {
      input.value = text; // give the text back so it is not lost
      updateComposer();
    }
  }

  /** Grows the field with its text and swaps the microphone for the send arrow. */
  function updateComposer() {
    const input = $("#composer-input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 160) + "px";
    $("#composer").classList.toggle("has-text", input.value.trim().length > 0);
    const match = /^\/(\w*)$/.exec(input.value);
    if (match && commandList.length) openCommands(match[1]);
    else $("#commands-menu").hidden = true;
  }

  const ACCEPT = {
    photo: "image/*",
    document: "",
    audio: "audio/*",
    video: "video/*",
    voice: "audio/*,.ogg,.oga,.opus,.webm,.mp3,.m4a,.wav",
  };

  let pendingKind = "photo";

  function chooseFiles(kind) {
    closeMenus();
    pendingKind = kind;
    const input = $("#file-input");
    input.value = "";
    input.accept = ACCEPT[kind] || "";
    // Several photos (or files) go as one album, as in Telegram.
    input.multiple = kind === "photo" || kind === "document";
    input.click();
  }

  async function upload(kind, files) {
    if (!files.length) return;
    const form = new FormData();
    form.append("kind", kind);
    const input = $("#composer-input");
    const caption = input.value.trim();
    if (caption) form.append("caption", caption);
    for (const file of files) form.append("file", file, file.name);
    const note = el("div", { className: "uploading" }, tr("uploading", { count: files.length }));
    $("#messages").append(note);
    state.stickToBottom = true;
    scrollToBottom();
    try {
      await api("/api/upload", { method: "POST", body: form });
      if (caption) {
        input.value = "";
        updateComposer();
      }
    } catch (error) {
      showAlert(tr("upload_failed", { error: error.message }));
    } finally {
      note.remove();
    }
  }

  // ------------------------------------------------------------------------------ voice recording

  const recording = {
    recorder: null,
    stream: null,
    chunks: [],
    startedAt: 0,
    pressedAt: 0,
    timer: null,
    cancelled: false,
  };

  function recorderMime() {
    const candidates = ["audio/ogg;codecs=opus", "audio/webm;codecs=opus", "audio/webm", "audio/mp4"];
    return candidates.find((type) => window.MediaRecorder.isTypeSupported(type)) || "";
  }

  async function startRecording() {
    if (!window.MediaRecorder || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showAlert(tr("no_recorder"));
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      showAlert(tr("mic_denied", { error: error.message || error.name }));
      return;
    }
    const mime = recorderMime();
    let recorder;
    try {
      recorder = new MediaRecorder(stream, mime ? { mimeType: mime } : undefined);
    } catch (_error) {
      for (const track of stream.getTracks()) track.stop();
      showAlert(tr("no_recorder"));
      return;
    }
    Object.assign(recording, { recorder, stream, chunks: [], startedAt: Date.now(), cancelled: false });
    recorder.addEventListener("dataavailable", (event) => event.data.size && recording.chunks.push(event.data));
    recorder.addEventListener("stop", finishRecording);
    recorder.start(250);
    $("#composer").classList.add("recording");
    $("#recording").hidden = false;
    $("#record").classList.add("active");
    recording.timer = setInterval(() => {
      $("#recording-time").textContent = formatDuration((Date.now() - recording.startedAt) / 1000);
    }, 250);
  }

  function stopRecording(cancel) {
    if (!recording.recorder) return;
    recording.cancelled = Boolean(cancel);
    recording.recorder.stop(); // "stop" then calls finishRecording
  }

  function finishRecording() {
    const { recorder, stream, chunks, startedAt, cancelled } = recording;
    clearInterval(recording.timer);
    for (const track of stream.getTracks()) track.stop();
    recording.recorder = null;
    $("#composer").classList.remove("recording");
    $("#recording").hidden = true;
    $("#record").classList.remove("active");
    $("#recording-time").textContent = "0:00";
    if (cancelled) return;
    if (Date.now() - startedAt < 700 || !chunks.length) {
      toast(tr("too_short"));
      return;
    }
    const type = (recorder.mimeType || "audio/webm").split(";")[0];
    const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    upload("voice", [new File(chunks, "voice." + extension, { type })]);
  }

  /** Hold the microphone to record and release to send, or click once to start and again to send. */
  function bindRecordButton() {
    const button = $("#record");
    button.addEventListener("pointerdown", async (event) => {
      event.preventDefault();
      if (recording.recorder) {
        stopRecording(false); // the second click of click-to-record
        recording.pressedAt = 0;
        return;
      }
      recording.pressedAt = Date.now();
      await startRecording();
    });
    button.addEventListener("pointerup", () => {
      const held = recording.pressedAt && Date.now() - recording.pressedAt > 600;
      recording.pressedAt = 0;
      if (held && recording.recorder) stopRecording(false);
    });
    // Keyboard users: Enter / Space on the button toggles.
    button.addEventListener("click", (event) => {
      if (event.detail !== 0) return; // a pointer click was handled above
      if (recording.recorder) stopRecording(false);
      else startRecording();
    });
    $("#recording-cancel").addEventListener("click", () => stopRecording(true));
  }

  // ------------------------------------------------------------------------------ live updates

  /** Long-polls /api/chat. When the server goes away (restart), retries with a growing delay and
   * shows the banner; on the way back it asks for the whole chat at once, because a restarted
   * server's version may be lower than ours. */
  async function pollChat() {
    let failures = 0;
    for (;;) {
      const since = state.version === null ? "" : "?since=" + encodeURIComponent(state.version);
      try {
        // The server answers within 25 s; a longer silence means a connection that died quietly.
        const data = await api("/api/chat" + since, { signal: AbortSignal.timeout(40000) });
        if (failures) {
          failures = 0;
          $("#banner").hidden = true;
          refreshPanel();
        }
        if (data.version !== state.version || !state.chat) {
          applyChat(data);
          refreshPanel();
        }
      } catch (_error) {
        failures += 1;
        state.version = null;
        $("#banner").hidden = false;
        await sleep(Math.min(8000, 400 * 2 ** Math.min(failures - 1, 5)));
      }
    }
  }

  // ------------------------------------------------------------------------------ operator panel

  // raw: the ledger's entries one by one, as stored, instead of the operations the user sees.
  // openCalls: the calls the operator opened (service/number); details: what /api/calls said of them.
  const panel = {
    busy: false,
    signature: "",
    data: null,
    service: "",
    raw: false,
    openCalls: new Set(),
    details: new Map(),
  };

  async function refreshPanel() {
    if (panel.busy) return;
    panel.busy = true;
    try {
      const data = await api("/api/panel");
      const signature = JSON.stringify(data) + lang;
      if (signature !== panel.signature) {
        panel.signature = signature;
        panel.data = data;
        renderPanel(data);
      }
    } catch (_error) {
      // The chat's long poll shows the reconnecting banner; the panel just tries again.
    } finally {
      panel.busy = false;
    }
  }

  function renderPanel(data) {
    $("#panel-balance").textContent = data.balance === undefined ? "—" : String(data.balance);
    $("#panel-on-hold").textContent = data.on_hold === undefined ? "—" : String(data.on_hold);
    fillList("#panel-ledger", panel.raw ? data.ledger : data.operations, ledgerItem);
    fillList("#panel-jobs", data.jobs, jobItem);
    const calls = (data.calls || []).filter((c) => !panel.service || c.service === panel.service);
    fillList("#panel-calls", calls, callItem);
  }

  function fillList(selector, items, render) {
    const list = $(selector);
    const nodes = (Array.isArray(items) ? items : []).map(render);
    if (!nodes.length) nodes.push(el("li", { className: "empty" }, tr("nothing_yet")));
    list.replaceChildren(...nodes);
  }

  function ledgerItem(entry) {
    const amount = Number(entry.amount) || 0;
    let description = entry.description || entry.reason || "";
    if (entry.state === "pending" || entry.state === "refunded") description += " — " + tr("state_" + entry.state);
    return el(
      "li",
      {
        className: "ledger-entry",
        "data-kind": entry.kind || "",
        "data-state": entry.state || "",
        "data-amount": String(amount),
      },
      el(
        "div",
        { className: "row" },
        el("span", { className: "grow" }, el("span", { className: "kind" }, entry.kind || ""), description),
        el("span", { className: "amount " + (amount >= 0 ? "plus" : "minus") }, (amount > 0 ? "+" : "") + amount)
      ),
      el(
        "div",
        { className: "row" },
        el("span", { className: "when" }, formatDay(entry.created_at) + " " + formatTime(entry.created_at)),
        entry.balance_after === undefined || entry.balance_after === null
          ? null
          : el("span", { className: "when" }, tr("balance_after", { balance: entry.balance_after }))
      )
    );
  }

  function jobItem(job) {
    const status = String(job.status || "");
    return el(
      "li",
      { className: "job", "data-kind": job.kind || "", "data-status": status },
      el(
        "div",
        { className: "row" },
        el(
          "span",
          { className: "grow" },
          el("span", { className: "kind" }, job.kind || ""),
          el("span", { className: "status " + status.toLowerCase().replace(/[^a-z_]/g, "") }, status)
        ),
        el("span", { className: "when" }, formatTime(job.created_at))
      ),
      job.detail ? el("div", { className: "detail" }, String(job.detail)) : null,
      jobFacts(job),
      job.error ? el("div", { className: "job-error" }, String(job.error)) : null
    );
  }

  /** "Avatar: Astro · charged 5 · 12.4 s · FAL id 1f2e…": what the operator checks a job by. */
  function jobFacts(job) {
    const facts = [];
    if (job.avatar) facts.push(tr("job_avatar", { name: job.avatar }));
    const price = Number(job.price) || 0;
    if (job.charged === null || job.charged === undefined) {
      if (price) facts.push(tr("job_on_hold", { amount: price }));
    } else if (job.charged > 0) {
      facts.push(tr("job_charged", { amount: job.charged }));
    } else if (price) {
      facts.push(tr("job_refunded", { amount: price }));
    }
    if (typeof job.duration_seconds === "number") facts.push(formatSeconds(job.duration_seconds));
    const node = el("div", { className: "job-facts" }, facts.join(" · "));
    if (job.provider_request_id) {
      node.append(
        facts.length ? " · " : "",
        tr("job_request"),
        " ",
        el("code", { className: "request-id", title: job.provider_request_id }, job.provider_request_id)
      );
    }
    return node.childNodes.length ? node : null;
  }

  function formatSeconds(seconds) {
    if (seconds < 60) return tr("seconds", { n: seconds.toFixed(1) });
    return formatDuration(seconds);
  }

  function callKey(call) {
    return call.service + "/" + call.number;
  }

  /** A call in the list; clicked, it opens to show what the bot sent and what came back. */
  function callItem(call) {
    const key = callKey(call);
    const open = panel.openCalls.has(key);
    const head = el(
      "div",
      { className: "call-head", role: "button", tabIndex: 0, "aria-expanded": String(open) },
      el(
        "div",
        { className: "row" },
        el(
          "span",
          { className: "grow" },
          el("span", { className: "service-tag " + String(call.service || "").replace(/[^a-z]/g, "") }, call.service || ""),
          el("span", { className: "method" }, call.method || "")
        ),
        el("span", { className: "when" }, formatTime(call.at))
      ),
      call.summary ? el("div", { className: "detail" }, String(call.summary)) : null
    );
    head.addEventListener("click", () => toggleCall(key));
    head.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        toggleCall(key);
      }
    });
    return el(
      "li",
      { className: "call" + (open ? " open" : ""), "data-service": call.service || "", "data-number": String(call.number) },
      head,
      open ? callDetail(panel.details.get(key)) : null
    );
  }

  async function toggleCall(key) {
    if (panel.openCalls.delete(key)) {
      if (panel.data) renderPanel(panel.data);
      return;
    }
    panel.openCalls.add(key);
    const known = panel.details.get(key);
    if (known && known.status !== null && known.status !== undefined) {
      if (panel.data) renderPanel(panel.data);
      return;
    }
    // Not fetched yet, or not answered when it was: ask again.
    panel.details.set(key, null);
    if (panel.data) renderPanel(panel.data);
    let detail;
    try {
      detail = await api("/api/calls/" + key.split("/").map(encodeURIComponent).join("/"));
    } catch (error) {
      detail = { error: error.message };
    }
    panel.details.set(key, detail);
    if (panel.data) renderPanel(panel.data);
  }

  function callDetail(detail) {
    if (!detail) return el("div", { className: "call-detail" }, tr("loading"));
    if (detail.error) return el("div", { className: "call-detail job-error" }, detail.error);
    const answered = detail.status !== null && detail.status !== undefined;
    return el(
      "div",
      { className: "call-detail" },
      el("div", { className: "call-path" }, detail.path || ""),
      el("div", { className: "call-part" }, tr("request")),
      el("pre", { className: "call-body" }, pretty(detail.request)),
      el("div", { className: "call-part" }, answered ? tr("response", { status: detail.status }) : tr("not_answered")),
      answered ? el("pre", { className: "call-body" }, pretty(detail.response)) : null
    );
  }

  /** A body as the operator reads it: text as it is, JSON indented. */
  function pretty(value) {
    if (value === null || value === undefined) return "—";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function bindLedgerView() {
    for (const button of document.querySelectorAll("#ledger-view button")) {
      button.addEventListener("click", () => {
        panel.raw = Boolean(button.dataset.raw);
        for (const other of document.querySelectorAll("#ledger-view button")) {
          other.classList.toggle("active", other === button);
        }
        if (panel.data) renderPanel(panel.data);
      });
    }
  }

  function bindCallsFilter() {
    for (const button of document.querySelectorAll("#calls-filter button")) {
      button.addEventListener("click", () => {
        panel.service = button.dataset.service;
        for (const other of document.querySelectorAll("#calls-filter button")) {
          other.classList.toggle("active", other === button);
        }
        if (panel.data) renderPanel(panel.data);
      });
    }
  }

  // ------------------------------------------------------------------------------ wiring

  function bindComposer() {
    const input = $("#composer-input");
    $("#composer").addEventListener("submit", submitComposer);
    input.addEventListener("input", updateComposer);
    input.addEventListener("keydown", (event) => {
      // Enter sends, Shift+Enter is a new line; not while an input method is composing.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submitComposer(event);
      if (event.key === "Escape") closeMenus();
    });
    $("#commands-button").addEventListener("click", () => {
      if ($("#commands-menu").hidden) openCommands("");
      else closeMenus();
    });
    $("#attach").addEventListener("click", () => {
      $("#commands-menu").hidden = true;
      $("#attach-menu").hidden = !$("#attach-menu").hidden;
    });
    for (const option of document.querySelectorAll(".attach-option")) {
      option.addEventListener("click", () => chooseFiles(option.dataset.kind));
    }
    $("#file-input").addEventListener("change", (event) => upload(pendingKind, Array.from(event.target.files)));
    $("#keyboard-toggle").addEventListener("click", toggleKeyboard);
  }

  function bindPage() {
    const messages = $("#messages");
    messages.addEventListener("scroll", () => {
      state.stickToBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
    });
    // The list shrinks when a reply keyboard appears or the field grows: keep the last message in view.
    new ResizeObserver(() => state.stickToBottom && scrollToBottom()).observe(messages);
    $("#alert-ok").addEventListener("click", () => ($("#alert").hidden = true));
    $("#lightbox").addEventListener("click", (event) => {
      if (event.target.id !== "lightbox-open") closeLightbox();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeOverlays();
    });
    document.addEventListener("click", (event) => {
      if (!event.target.closest(".popup-menu, #attach, #commands-button, #composer-input")) closeMenus();
    });
    $("#panel-toggle").addEventListener("click", () => $("#app").classList.toggle("panel-hidden"));
    $("#panel-close").addEventListener("click", () => $("#app").classList.add("panel-hidden"));
    // On a narrow screen the panel would cover the chat: it starts closed, and closes when the
    // window becomes narrow (a phone turned, a window made smaller).
    const narrow = window.matchMedia("(max-width: 900px)");
    if (narrow.matches) $("#app").classList.add("panel-hidden");
    narrow.addEventListener("change", () => $("#app").classList.toggle("panel-hidden", narrow.matches));
  }

  function start() {
    const preferred = (navigator.language || "en").toLowerCase().startsWith("ru") ? "ru" : "en";
    lang = preferred === "ru" ? "en" : "ru"; // force the first setLanguage to apply the strings
    setLanguage(preferred);
    bindPage();
    bindComposer();
    bindRecordButton();
    bindCallsFilter();
    bindLedgerView();
    updateComposer();
    pollChat();
    refreshPanel();
    setInterval(refreshPanel, 2000);
  }

  start();
})();
