// Friends with presence, requests in and out (accept, reject), search and
// add, delete, block and unblock.
import { useState } from "preact/hooks";
import type { UserProfile } from "../gen/user_pb";
import { useApp, useAction } from "./hooks";

export function Contacts({ onChat }: { onChat: (id: string) => void }) {
  const [app, state] = useApp();
  const [query, setQuery] = useState("");
  const [found, setFound] = useState<UserProfile[]>();
  const [error, act] = useAction();
  const me = state.session?.userId ?? 0n;

  return (
    <section class="pane" aria-labelledby="contacts-title">
      <h2 id="contacts-title">Contacts</h2>
      {error && <p role="alert" class="error">{error}</p>}
      <form class="row" role="search" onSubmit={(e) => {
        e.preventDefault();
        act(async () => setFound(await app.search(query)));
      }}>
        <input aria-label="Search people" placeholder="Search by name" value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
        <button type="submit">Search</button>
      </form>
      {found && (
        <ul class="people" aria-label="Search results">
          {found.filter((u) => u.userId !== me).map((u) => {
            const friend = state.friends.some((f) => f.userId === u.userId);
            const asked = state.outgoing.some((r) => r.toUserId === u.userId);
            return (
              <li key={String(u.userId)}>
                <span>{u.nickname || u.username} <small>@{u.username}</small></span>
                {friend ? <small>friend</small> : asked ? <small>requested</small> : (
                  <button onClick={() => act(() => app.requestFriend(u.userId))}>Add {u.username}</button>
                )}
              </li>
            );
          })}
          {found.length === 0 && <li>Nobody found.</li>}
        </ul>
      )}
      {state.incoming.length > 0 && (
        <>
          <h3>Requests</h3>
          <ul class="people" aria-label="Friend requests">
            {state.incoming.map((r) => (
              <li key={String(r.fromUserId)}>
                <span>{app.name(r.fromUserId)}{r.note && <small> “{r.note}”</small>}</span>
                <span>
                  <button onClick={() => act(() => app.answerFriend(r.fromUserId, true))}>Accept {app.name(r.fromUserId)}</button>
                  <button class="secondary" onClick={() => act(() => app.answerFriend(r.fromUserId, false))}>Reject</button>
                </span>
              </li>
            ))}
          </ul>
        </>
      )}
      {state.outgoing.length > 0 && (
        <>
          <h3>Sent requests</h3>
          <ul class="people">
            {state.outgoing.map((r) => <li key={String(r.toUserId)}>{app.name(r.toUserId)} <small>waiting</small></li>)}
          </ul>
        </>
      )}
      <h3>Friends</h3>
      <ul class="people" aria-label="Friends">
        {state.friends.map((f) => (
          <li key={String(f.userId)}>
            <span><span class={app.online(f.userId) ? "dot on" : "dot"} role="img" aria-label={app.online(f.userId) ? "online" : "offline"} />
              {f.nickname || f.username}</span>
            <span>
              <button onClick={() => onChat(app.chatWith(f.userId))}>Chat with {f.username}</button>
              <button class="secondary" onClick={() => act(() => app.deleteFriend(f.userId))}>Remove</button>
              <button class="secondary" onClick={() => act(() => app.block(f.userId, true))}>Block</button>
            </span>
          </li>
        ))}
        {state.friends.length === 0 && <li>No friends yet: search above.</li>}
      </ul>
      {state.blocked.length > 0 && (
        <>
          <h3>Blocked</h3>
          <ul class="people">
            {state.blocked.map((id) => (
              <li key={String(id)}>{app.name(id)}
                <button class="secondary" onClick={() => act(() => app.block(id, false))}>Unblock</button></li>
            ))}
          </ul>
        </>
      )}
    </section>
  );
}
