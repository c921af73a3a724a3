// Groups: create from friends, members with roles, add and remove, make
// admin, leave, dissolve.
import { useEffect, useState } from "preact/hooks";
import { GroupRole, type GroupInfo, type GroupMember } from "../gen/group_pb";
import { groupChatId } from "../state/chats";
import { useApp, useAction } from "./hooks";

function GroupDetail({ group, onChat }: { group: GroupInfo; onChat: (id: string) => void }) {
  const [app, state] = useApp();
  const [members, setMembers] = useState<GroupMember[]>([]);
  const [error, act] = useAction();
  const groupId = group.groupId;
  const reload = () => act(async () => setMembers(await app.members(groupId)));
  useEffect(reload, [groupId, group.memberCount]);
  const change = (body: Parameters<typeof app.groupChange>[0]) => act(async () => {
    await app.groupChange(body);
    setMembers(await app.members(groupId));
  });
  const canManage = group.myRole !== GroupRole.MEMBER;
  const outside = state.friends.filter((f) => !members.some((m) => m.userId === f.userId));

  return (
    <div class="group-detail" aria-label={`Group ${group.name}`}>
      <h3>{group.name}</h3>
      {error && <p role="alert" class="error">{error}</p>}
      <button onClick={() => onChat(groupChatId(groupId))}>Open {group.name} chat</button>
      <ul class="people" aria-label="Members">
        {members.map((m) => (
          <li key={String(m.userId)}>
            <span>{app.name(m.userId)} <small class="role">{GroupRole[m.role].toLowerCase()}</small></span>
            <span>
              {group.myRole === GroupRole.OWNER && m.role !== GroupRole.OWNER && (
                <button class="secondary" onClick={() => change({ case: "setAdmin", value: { groupId, userId: m.userId, admin: m.role !== GroupRole.ADMIN } } as never)}>
                  {m.role === GroupRole.ADMIN ? "Remove admin" : "Make admin"}
                </button>
              )}
              {canManage && m.role < group.myRole && (
                <button class="secondary" onClick={() => change({ case: "removeMembers", value: { groupId, userIds: [m.userId] } } as never)}>Remove</button>
              )}
            </span>
          </li>
        ))}
      </ul>
      {canManage && outside.length > 0 && (
        <p class="row">
          {outside.map((f) => (
            <button key={String(f.userId)} class="secondary"
              onClick={() => change({ case: "addMembers", value: { groupId, userIds: [f.userId] } } as never)}>Add {f.username}</button>
          ))}
        </p>
      )}
      {group.myRole === GroupRole.OWNER ? (
        <button class="danger" onClick={() => change({ case: "dissolveGroup", value: { groupId } } as never)}>Dissolve group</button>
      ) : (
        <button class="danger" onClick={() => change({ case: "leaveGroup", value: { groupId } } as never)}>Leave group</button>
      )}
    </div>
  );
}

export function Groups({ onChat }: { onChat: (id: string) => void }) {
  const [app, state] = useApp();
  const [name, setName] = useState("");
  const [picked, setPicked] = useState<bigint[]>([]);
  const [open, setOpen] = useState<bigint>();
  const [error, act] = useAction();
  const current = state.groups.find((g) => g.groupId === open);

  return (
    <section class="pane" aria-labelledby="groups-title">
      <h2 id="groups-title">Groups</h2>
      {error && <p role="alert" class="error">{error}</p>}
      <form onSubmit={(e) => {
        e.preventDefault();
        act(async () => {
          const id = await app.createGroup(name, picked);
          setName("");
          setPicked([]);
          onChat(id);
        });
      }}>
        <label>New group name<input required maxLength={64} value={name} onInput={(e) => setName(e.currentTarget.value)} /></label>
        <fieldset>
          <legend>Members</legend>
          {state.friends.map((f) => (
            <label key={String(f.userId)} class="check">
              <input type="checkbox" checked={picked.includes(f.userId)}
                onChange={(e) => setPicked(e.currentTarget.checked ? [...picked, f.userId] : picked.filter((id) => id !== f.userId))} />
              {f.nickname || f.username}
            </label>
          ))}
          {state.friends.length === 0 && <small>Add friends first.</small>}
        </fieldset>
        <button type="submit">Create group</button>
      </form>
      <ul class="people" aria-label="My groups">
        {state.groups.map((g) => (
          <li key={String(g.groupId)}>
            <span>{g.name} <small>{g.memberCount} members · {GroupRole[g.myRole].toLowerCase()}</small></span>
            <button class="secondary" onClick={() => setOpen(open === g.groupId ? undefined : g.groupId)}
              aria-expanded={open === g.groupId}>Manage {g.name}</button>
          </li>
        ))}
      </ul>
      {current && <GroupDetail group={current} onChat={onChat} />}
    </section>
  );
}
