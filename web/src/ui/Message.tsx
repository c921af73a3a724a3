// One message bubble: text, media by URL, location, recalled; my sends show
// pending, sent, read or failed (with retry).
import { MessageType } from "../gen/common_pb";
import type { Item } from "../state/timeline";

interface Props {
  item: Item;
  mine: boolean;
  author: string;
  read: boolean;
  onRetry: () => void;
  onRecall?: () => void;
}

function Body({ item }: { item: Item }) {
  if (item.recalled) return <em>Message recalled</em>;
  if (item.type === MessageType.IMAGE && item.media) {
    return <img src={item.media.url} alt={item.content || "image"} loading="lazy" />;
  }
  if (item.media) {
    return <a href={item.media.url} target="_blank" rel="noopener noreferrer">{item.media.fileName || item.media.url}</a>;
  }
  if (item.location) {
    const { latitude, longitude, title } = item.location;
    return <span>Location: {title || "shared"} ({latitude.toFixed(4)}, {longitude.toFixed(4)})</span>;
  }
  return <span class="text">{item.content}</span>;
}

export function Message({ item, mine, author, read, onRetry, onRecall }: Props) {
  if (item.type === MessageType.GROUP_EVENT) {
    return <li class="event" data-seq={String(item.seq)}>{mine ? "You" : author} {item.content}</li>;
  }
  const status = item.status === "sent" ? (read ? "read" : "sent") : item.status;
  return (
    <li class={mine ? "msg mine" : "msg"} data-seq={String(item.seq)} data-status={status}>
      {!mine && <span class="author">{author}</span>}
      <div class="bubble">
        <Body item={item} />
      </div>
      <span class="meta">
        <time>{new Date(item.sentAtMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}</time>
        {mine && <span class="status" aria-label={status}>{{ pending: "…", sent: "✓", read: "✓✓", failed: "!" }[status]}</span>}
        {item.status === "failed" && (
          <button class="link" onClick={onRetry}>Retry{item.error ? ` (${item.error})` : ""}</button>
        )}
        {onRecall && !item.recalled && <button class="link" onClick={onRecall}>Recall</button>}
      </span>
    </li>
  );
}
