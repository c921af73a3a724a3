// Conversations and groups by activity: last message, unread badge, presence dot.
import { preview } from "../state/timeline";
import { useApp } from "./hooks";

export function ChatList({ onOpen }: { onOpen: (id: string) => void }) {
  const [app, state] = useApp();
  if (!state.chats.length) {
    return <p class="empty">No conversations yet. Add a friend under Contacts and say hello.</p>;
  }
  return (
    <ul class="chat-list" aria-label="Conversations">
      {state.chats.map((chat) => {
        const title = app.titleOf(chat.id);
        return (
          <li key={chat.id}>
            <button class={state.viewing === chat.id ? "chat-row active" : "chat-row"} onClick={() => onOpen(chat.id)}>
              <span class="avatar" aria-hidden="true">
                {title.slice(0, 1).toUpperCase()}
                {chat.peerId > 0n && <span class={app.online(chat.peerId) ? "dot on" : "dot"} />}
              </span>
              <span class="chat-text">
                <span class="chat-title">{title}</span>
                <span class="chat-last">{chat.last ? preview(chat.last) : ""}</span>
              </span>
              <span class="chat-meta">
                {chat.lastAtMs > 0 && <time>{new Date(chat.lastAtMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}</time>}
                {chat.unread > 0 && <span class="badge">{chat.unread}<span class="sr-only"> unread</span></span>}
              </span>
            </button>
          </li>
        );
      })}
    </ul>
  );
}
