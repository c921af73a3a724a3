// The shell: sign-in when signed out; otherwise tabs (chats, contacts,
// groups, me), the open chat beside the list on wide screens and instead of
// it on a phone, and the connection state when it is not online.
import { useState } from "preact/hooks";
import { totalUnread } from "../state/chats";
import { ChatList } from "./ChatList";
import { ChatView } from "./ChatView";
import { Contacts } from "./Contacts";
import { Groups } from "./Groups";
import { useApp } from "./hooks";
import { Login } from "./Login";
import { Settings } from "./Settings";

type Tab = "chats" | "contacts" | "groups" | "me";
const TABS: [Tab, string][] = [["chats", "Chats"], ["contacts", "Contacts"], ["groups", "Groups"], ["me", "Me"]];

export function Root() {
  const [, state] = useApp();
  const [tab, setTab] = useState<Tab>("chats");
  const [chat, setChat] = useState<string>();
  if (!state.session || (state.net === "signed-out")) return <Login />;
  const openChat = (id: string) => {
    setChat(id);
    setTab("chats");
  };
  const unread = totalUnread(state.chats);
  return (
    <div class={chat ? "shell has-chat" : "shell"}>
      {state.net !== "online" && (
        <div class="netbar" role="status">{state.net === "reconnecting" ? "Reconnecting…" : "Connecting…"}</div>
      )}
      <nav class="tabs" aria-label="Sections">
        {TABS.map(([id, label]) => (
          <button key={id} aria-current={tab === id ? "page" : undefined} onClick={() => setTab(id)}>
            {label}{id === "chats" && unread > 0 && <span class="badge">{unread}</span>}
          </button>
        ))}
      </nav>
      <aside class="side">
        {tab === "chats" && <ChatList onOpen={openChat} />}
        {tab === "contacts" && <Contacts onChat={openChat} />}
        {tab === "groups" && <Groups onChat={openChat} />}
        {tab === "me" && <Settings />}
      </aside>
      <main class="main">
        {chat ? <ChatView key={chat} id={chat} onBack={() => setChat(undefined)} /> : <p class="empty">Pick a conversation.</p>}
      </main>
    </div>
  );
}
