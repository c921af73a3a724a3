// One conversation: history paged by scrolling up, live messages, the
// typing line, and the composer (text, image or file by URL, location).
import { useEffect, useRef, useState } from "preact/hooks";
import { MessageType } from "../gen/common_pb";
import { peerOf } from "../state/chats";
import { useApp, useAction } from "./hooks";
import { Message } from "./Message";

const RECALL_WINDOW_MS = 120_000;

const MIME_BY_EXTENSION: Record<string, string> = {
  png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp", svg: "image/svg+xml",
  pdf: "application/pdf", txt: "text/plain", zip: "application/zip", mp3: "audio/mpeg", mp4: "video/mp4",
};

function imageSize(url: string): Promise<{ width: number; height: number }> {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve({ width: image.naturalWidth || 1, height: image.naturalHeight || 1 });
    image.onerror = () => reject(new Error("that image could not be loaded"));
    image.src = url;
  });
}

/** A link's type from its file name (the node checks that images say image/*). */
export function guessMime(fileName: string, type: MessageType): string {
  const known = MIME_BY_EXTENSION[fileName.split(".").pop()?.toLowerCase() ?? ""];
  if (type === MessageType.IMAGE) return known?.startsWith("image/") ? known : "image/jpeg";
  return known ?? "application/octet-stream";
}

export function ChatView({ id, onBack }: { id: string; onBack: () => void }) {
  const [app, state] = useApp();
  const [text, setText] = useState("");
  const [attach, setAttach] = useState<"" | "image" | "file" | "location">("");
  const [url, setUrl] = useState("");
  const [error, act] = useAction();
  const list = useRef<HTMLOListElement>(null);
  const lastTyping = useRef(0);
  const input = useRef<HTMLInputElement>(null);
  const me = state.session?.userId ?? 0n;
  const chat = state.chats.find((c) => c.id === id);
  const timeline = state.timelines[id];
  const items = timeline?.items ?? [];
  const peerId = chat?.peerId ?? peerOf(id, me);
  const title = app.titleOf(id);
  const typing = app.isTyping(id);
  const [, tick] = useState(0);

  useEffect(() => {
    act(() => app.open(id));
    // Ready to type on a wide screen; a phone would throw its keyboard up.
    if (matchMedia("(min-width: 721px)").matches) input.current?.focus();
    return () => app.close();
  }, [id]);

  // The newest message stays in view as messages arrive.
  const newest = items.length ? String(items[items.length - 1].seq) + items[items.length - 1].status : "";
  useEffect(() => {
    list.current?.scrollTo({ top: list.current.scrollHeight });
  }, [newest]);

  // The typing line fades by itself.
  useEffect(() => {
    if (!typing) return;
    const timer = setTimeout(() => tick((n) => n + 1), 5_100);
    return () => clearTimeout(timer);
  }, [typing, state.typing[id]]);

  const onScroll = () => {
    const el = list.current;
    if (el && el.scrollTop < 40 && timeline?.hasMore) {
      const before = el.scrollHeight;
      act(async () => {
        await app.olderPage(id);
        requestAnimationFrame(() => el.scrollTo({ top: el.scrollHeight - before }));
      });
    }
  };

  const onInput = (value: string) => {
    setText(value);
    if (Date.now() - lastTyping.current > 2_000 && value) {
      lastTyping.current = Date.now();
      app.typing(id, true);
    }
  };

  const submit = (event: Event) => {
    event.preventDefault();
    if (attach === "image" || attach === "file") {
      if (!/^https?:\/\//.test(url)) return act(async () => { throw new Error("the link must start with http:// or https://"); });
      const fileName = url.split("/").pop() || "file";
      const type = attach === "image" ? MessageType.IMAGE : MessageType.FILE;
      const caption = text;
      const media = { type, url, mime: guessMime(fileName, type), fileName };
      if (type === MessageType.IMAGE) {
        // The node stores an image's size; the browser learns it by loading it.
        act(async () => app.send(id, { text: caption, media: { ...media, ...(await imageSize(url)) } }));
      } else {
        app.send(id, { text, media });
      }
    } else if (attach === "location") {
      const [lat, lon] = url.split(",").map((n) => Number(n.trim()));
      if (!(Math.abs(lat) <= 90 && Math.abs(lon) <= 180)) return act(async () => { throw new Error("enter latitude, longitude"); });
      app.send(id, { location: { latitude: lat, longitude: lon, title: text || "Shared location" } });
    } else if (text.trim()) {
      app.send(id, { text });
    } else {
      return;
    }
    setText("");
    setUrl("");
    setAttach("");
    lastTyping.current = 0;
    app.typing(id, false);
  };

  return (
    <section class="chat" aria-label={`Chat with ${title}`}>
      <header class="chat-head">
        <button class="back" onClick={onBack} aria-label="Back to conversations">←</button>
        <div>
          <h2>{title}</h2>
          <p class="sub" aria-live="polite">
            {typing ? `${title} is typing…` : peerId > 0n ? (app.online(peerId) ? "online" : "offline") : ""}
          </p>
        </div>
      </header>
      <ol class="messages" ref={list} onScroll={onScroll} aria-label="Messages" tabIndex={0}>
        {timeline?.hasMore === false && <li class="start">Start of the conversation</li>}
        {items.map((item) => {
          const mine = item.senderId === me;
          const recallable = mine && item.seq > 0n && item.type !== MessageType.GROUP_EVENT && Date.now() - item.sentAtMs < RECALL_WINDOW_MS;
          return (
            <Message key={item.seq > 0n ? `s${item.seq}` : `c${item.clientMessageId}`} item={item} mine={mine}
              author={app.name(item.senderId)}
              read={mine && item.seq > 0n && (timeline?.peerReadSeq ?? 0n) >= item.seq}
              onRetry={() => app.retry(item.clientMessageId)}
              onRecall={recallable ? () => act(() => app.recall(id, item.seq)) : undefined} />
          );
        })}
      </ol>
      {error && <p role="alert" class="error">{error}</p>}
      <form class="composer" onSubmit={submit}>
        <label class="sr-only" for="attach">Attachment</label>
        <select id="attach" value={attach} onChange={(e) => setAttach(e.currentTarget.value as typeof attach)}>
          <option value="">Text</option>
          <option value="image">Image link</option>
          <option value="file">File link</option>
          <option value="location">Location</option>
        </select>
        {attach && (
          <input aria-label={attach === "location" ? "Latitude, longitude" : "Link"} value={url}
            placeholder={attach === "location" ? "52.52, 13.40" : "https://…"} onInput={(e) => setUrl(e.currentTarget.value)} />
        )}
        <input ref={input} aria-label={attach ? "Caption" : "Message"} placeholder={attach ? "Caption" : "Message"} value={text}
          onInput={(e) => onInput(e.currentTarget.value)} onBlur={() => app.typing(id, false)} />
        <button type="submit">Send</button>
      </form>
    </section>
  );
}
