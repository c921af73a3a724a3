// The app's state and everything it does over the socket: log in, resync
// after every (re)connect, take pushes, send with pending → acked → failed
// and retry, page history, read receipts, typing, friends, groups and
// presence. Screens read `app.state` and call these methods; the pure
// rules live in timeline.ts and chats.ts, the socket in net.ts.
import { Connection, expect, ServerError, type Body, type NetState } from "../net";
import { MessageType } from "../gen/common_pb";
import type { Friend, FriendsResponse } from "../gen/session_pb";
import type { GroupInfo, GroupMember } from "../gen/group_pb";
import { PresenceState } from "../gen/presence_pb";
import * as cache from "./cache";
import { directId, fromSummary, groupChatId, groupOf, onMessage, onPeerRead, onRead, peerOf, upsert, type Chat } from "./chats";
import {
  acked, addPending, advanceCursors, cursorsOf, emptyTimeline, failed, followOn, fromChat, merge, oldestSeq,
  recalled, retrying, type Item, type Media, type Place, type Timeline,
} from "./timeline";

export interface Session {
  userId: bigint;
  username: string;
  deviceId: string;
  token: string;
}

export interface State {
  session?: Session;
  net: NetState | "signed-out";
  chats: Chat[];
  timelines: Record<string, Timeline>;
  profiles: Record<string, cache.Profile>;
  friends: Friend[];
  incoming: FriendsResponse["incoming"];
  outgoing: FriendsResponse["outgoing"];
  blocked: bigint[];
  groups: GroupInfo[];
  presence: Record<string, PresenceState>;
  /** conversation id → until when the peer is typing (ms). */
  typing: Record<string, number>;
  /** The open conversation. */
  viewing?: string;
  notice?: string;
  /** ms from start to the chat list drawn from the cache. */
  cachedRenderMs?: number;
}

export type Listener = (state: State) => void;

interface Unsent {
  conversationId: string;
  body: Body;
  /** Lost with the connection (or refused for now): resent after a reconnect. */
  auto: boolean;
}

const SESSION_KEY = "ourchat.session";
const TYPING_SHOWN_MS = 5_000;
/** Messages per history page, and what a new device syncs per conversation. */
const PAGE = 30n;

function randomId(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(words[0] & 0x7fff_ffff) << 32n) | BigInt(words[1]);
}

function socketUrl(): string {
  const { protocol, host } = window.location;
  return `${protocol === "https:" ? "wss" : "ws"}://${host}/ws`;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class App {
  state: State = {
    net: "signed-out", chats: [], timelines: {}, profiles: {}, friends: [], incoming: [], outgoing: [],
    blocked: [], groups: [], presence: {}, typing: {},
  };
  private listeners = new Set<Listener>();
  private connection?: Connection;
  private password?: string;
  private saveTimer?: ReturnType<typeof setTimeout>;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  /** Profiles requested and not answered yet. */
  private readonly profilesAsked = new Set<bigint>();
  /**
   * Sends not yet acked, by client_message_id: resent as they were after a
   * reconnect (`auto`), or when the person taps retry after a refusal.
   */
  private readonly unsent = new Map<bigint, Unsent>();
  /** Where the next resync starts (`Snapshot.synced`). */
  private synced = new Map<string, bigint>();

  constructor(private readonly url = socketUrl()) {}

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private set(patch: Partial<State>): void {
    this.state = { ...this.state, ...patch };
    for (const listener of this.listeners) listener(this.state);
  }

  /** Applies `change` to one conversation's timeline (an empty one if none). */
  private updateTimeline(conversationId: string, change: (timeline: Timeline) => Timeline): Timeline {
    const next = change(this.state.timelines[conversationId] ?? emptyTimeline());
    this.set({ timelines: { ...this.state.timelines, [conversationId]: next } });
    return next;
  }

  /** Keeps the session for reloads (ids as strings: JSON has no bigint). */
  private remember(session: Session): void {
    localStorage.setItem(SESSION_KEY, JSON.stringify({ ...session, userId: String(session.userId) }));
    this.set({ session });
  }

  private persistSoon(): void {
    const session = this.state.session;
    if (!session) return;
    clearTimeout(this.saveTimer);
    this.saveTimer = setTimeout(() => {
      const { chats, timelines, profiles } = this.state;
      void cache.save(session.userId, { chats, timelines, profiles, synced: Object.fromEntries(this.synced) });
    }, 300);
  }

  /** Picks up a remembered session: cached state first, then the socket. */
  async resume(started = performance.now()): Promise<void> {
    const saved = localStorage.getItem(SESSION_KEY);
    if (!saved) return;
    const parsed = JSON.parse(saved) as Record<string, string>;
    const session: Session = { ...parsed, userId: BigInt(parsed.userId) } as Session;
    const { synced, ...snapshot } = await cache.load(session.userId);
    this.synced = cursorsOf(synced, snapshot.timelines);
    this.set({ session, ...snapshot, net: "connecting" });
    this.set({ cachedRenderMs: Math.round(performance.now() - started) });
    this.connect();
  }

  async register(username: string, password: string, nickname: string): Promise<void> {
    let opened = () => {};
    const ready = new Promise<void>((resolve) => (opened = resolve));
    const socket = new Connection(this.url, { push: () => {}, opened: async () => opened(), state: () => {} });
    socket.start();
    try {
      await Promise.race([
        ready,
        new Promise((_, reject) => setTimeout(() => reject(new Error("the node did not answer")), 10_000)),
      ]);
      expect(await socket.request({ case: "register", value: { username, password, nickname } }), "registerResp");
    } finally {
      socket.stop();
    }
  }

  /** Logs in with a password; the token is kept for reloads and reconnects. */
  login(username: string, password: string): Promise<void> {
    const deviceId = localStorage.getItem("ourchat.device") ?? `web-${randomId().toString(36)}`;
    localStorage.setItem("ourchat.device", deviceId);
    this.password = password;
    this.set({ session: { userId: 0n, username, deviceId, token: "" }, net: "connecting" });
    return new Promise((resolve, reject) => {
      const stop = this.subscribe((state) => {
        if (state.net === "online") {
          stop();
          resolve();
        } else if (state.net === "signed-out") {
          stop();
          reject(new Error(state.notice ?? "login failed"));
        }
      });
      this.connect();
    });
  }

  private connect(): void {
    this.connection?.stop();
    const connection = new Connection(this.url, {
      push: (body) => this.onPush(body),
      opened: () => this.onOpened(),
      state: (net) => this.set({ net }),
    });
    this.connection = connection;
    connection.start();
  }

  private get net(): Connection {
    if (!this.connection) throw new Error("not signed in");
    return this.connection;
  }

  /** The socket is (again) open: log in, then catch up on everything. */
  private async onOpened(): Promise<void> {
    const session = this.state.session;
    if (!session) throw new Error("no session");
    // Before the login: once it is answered, pushes come.
    let cursors = new Map(this.synced);
    let reply: Body;
    try {
      reply = await this.net.request({
        case: "login",
        value: {
          username: session.username,
          password: this.password ?? "",
          token: this.password ? "" : session.token,
          deviceId: session.deviceId,
          deviceType: "web",
        },
      });
    } catch (error) {
      if (error instanceof ServerError && !error.retryable) this.signedOut(error.message);
      throw error;
    }
    const login = expect(reply, "loginResp");
    this.password = undefined;
    const fresh: Session = { ...session, userId: login.userId, token: login.token, deviceId: login.deviceId || session.deviceId };
    this.remember(fresh);
    if (session.userId !== fresh.userId) {
      // Pushes may come in while the cache loads: it goes under them, not over them.
      const cached = await cache.load(fresh.userId);
      cursors = cursorsOf(cached.synced, cached.timelines);
      const timelines = { ...cached.timelines };
      for (const [id, timeline] of Object.entries(this.state.timelines)) {
        timelines[id] = merge(timelines[id] ?? emptyTimeline(), timeline.items, fresh.userId);
      }
      this.set({
        timelines,
        chats: upsert(cached.chats, this.state.chats),
        profiles: { ...cached.profiles, ...this.state.profiles },
      });
    }
    this.net.keepAlive(login.heartbeatSecs || 30);
    this.refreshBefore(Number(login.expireAt) * 1000);
    await this.catchUp(cursors);
  }

  /**
   * Asks for a fresh token when 80% of this one's life has gone, so an
   * open tab never reconnects with an expired token.
   */
  private refreshBefore(expiresAtMs: number): void {
    clearTimeout(this.refreshTimer);
    if (!expiresAtMs) return;
    const wait = Math.max(1_000, (expiresAtMs - Date.now()) * 0.8);
    // setTimeout holds at most 2^31-1 ms (24.8 days); a longer token checks again then.
    this.refreshTimer = setTimeout(() => {
      if (expiresAtMs - Date.now() > 2 ** 31 - 1) return this.refreshBefore(expiresAtMs);
      void this.refreshToken();
    }, Math.min(wait, 2 ** 31 - 1));
  }

  private async refreshToken(): Promise<void> {
    const session = this.state.session;
    if (!session || this.state.net !== "online") return;
    try {
      const fresh = expect(await this.net.request({ case: "refreshToken", value: {} }), "refreshTokenResp");
      this.remember({ ...session, token: fresh.token });
      this.refreshBefore(Number(fresh.expireAt) * 1000);
    } catch {
      // The next login (on reconnect) refreshes the schedule.
    }
  }

  private async catchUp(cursors: Map<string, bigint>): Promise<void> {
    const conversations = expect(
      await this.net.request({ case: "conversations", value: { limit: 200 } }),
      "conversationsResp",
    );
    this.set({ chats: upsert(this.state.chats, conversations.conversations.map(fromSummary)) });
    await this.sync(cursors);
    await Promise.all([this.loadFriends(), this.loadGroups()]);
    await this.loadProfiles(this.state.chats.map((c) => c.peerId).filter((id) => id > 0n));
    // Sends cut off by the drop go again with their client_message_id.
    for (const [clientMessageId, unsent] of this.unsent) if (unsent.auto) this.retry(clientMessageId);
    this.persistSoon();
  }

  /**
   * Everything after each conversation's cursor (`Snapshot.synced`, as it
   * stood when the socket opened); a conversation this browser has nothing
   * of starts one page before its end (older pages come with scrolling),
   * so a new device does not pull every conversation's whole past. The
   * cursors become the app's from here: pages and pushes move them on.
   */
  private async sync(cursors: Map<string, bigint>): Promise<void> {
    this.synced = cursors;
    for (let page = 0; page < 50; page++) {
      const since = this.state.chats.map((chat) => {
        const seq = cursors.get(chat.id) ?? (chat.lastSeq > PAGE ? chat.lastSeq - PAGE : 0n);
        cursors.set(chat.id, seq);
        return { conversationId: chat.id, seq };
      });
      const reply = expect(await this.net.request({ case: "sync", value: { since, limit: 500 } }), "syncResp");
      const arrived = reply.messages.map(fromChat);
      this.take(arrived);
      advanceCursors(cursors, arrived);
      if (!reply.hasMore || reply.messages.length === 0) return;
    }
  }

  /** Stored messages into their timelines and the chat list, acked as delivered. */
  private take(items: Item[]): void {
    const session = this.state.session;
    if (!session || items.length === 0) return;
    const byConversation = new Map<string, Item[]>();
    for (const item of items) {
      const same = byConversation.get(item.conversationId);
      if (same) same.push(item);
      else byConversation.set(item.conversationId, [item]);
    }
    const timelines = { ...this.state.timelines };
    let chats = this.state.chats;
    const newest = new Map<string, bigint>();
    for (const [conversationId, arrived] of byConversation) {
      const timeline = merge(timelines[conversationId] ?? emptyTimeline(), arrived, session.userId);
      timelines[conversationId] = timeline;
      const last = timeline.items.filter((i) => i.seq > 0n).at(-1);
      if (last) {
        chats = onMessage(chats, last, session.userId, this.state.viewing);
        newest.set(conversationId, last.seq);
      }
    }
    this.set({ timelines, chats });
    for (const [conversationId, seq] of newest) {
      this.net.tell({ case: "deliveryAck", value: { conversationId, seq } });
      if (conversationId === this.state.viewing) void this.markRead(conversationId);
    }
    void this.loadProfiles(items.map((i) => i.senderId));
    this.persistSoon();
  }

  private onPush(body: Body): void {
    const me = this.state.session?.userId ?? 0n;
    switch (body.case) {
      case "pushMessage":
        followOn(this.synced, body.value.conversationId, body.value.seq);
        this.take([fromChat(body.value)]);
        if (body.value.messageType === MessageType.GROUP_EVENT) void this.loadGroups();
        break;
      case "readReceipt": {
        const { conversationId, readerId, seq } = body.value;
        if (readerId === me) {
          this.set({ chats: onRead(this.state.chats, conversationId, seq) });
        } else {
          this.set({ chats: onPeerRead(this.state.chats, conversationId, seq) });
          this.updateTimeline(conversationId, (timeline) => ({ ...timeline, peerReadSeq: seq }));
        }
        break;
      }
      case "recalled":
        this.updateTimeline(body.value.conversationId, (timeline) => recalled(timeline, body.value.seq));
        break;
      case "typingPush": {
        const until = body.value.typing ? Date.now() + TYPING_SHOWN_MS : 0;
        this.set({ typing: { ...this.state.typing, [body.value.conversationId]: until } });
        break;
      }
      case "friendEvent":
        void this.loadFriends();
        break;
      case "presence":
        this.set({ presence: { ...this.state.presence, [String(body.value.userId)]: body.value.state } });
        break;
      case "systemNotice":
        this.set({ notice: body.value.text });
        break;
      case "kicked":
        this.signedOut(`Signed out: ${body.value.reason}`);
        break;
      default:
        break;
    }
  }

  private signedOut(notice: string): void {
    clearTimeout(this.refreshTimer);
    this.connection?.stop();
    this.connection = undefined;
    localStorage.removeItem(SESSION_KEY);
    this.synced = new Map();
    this.set({ session: undefined, net: "signed-out", notice, chats: [], timelines: {}, viewing: undefined });
  }

  async logout(): Promise<void> {
    const userId = this.state.session?.userId;
    await this.connection?.request({ case: "logout", value: {} }).catch(() => {});
    if (userId) await cache.forget(userId);
    this.signedOut("Signed out");
  }

  // ---- conversations ----

  /** Opens a conversation: the newest page if nothing is cached, reads marked. */
  async open(conversationId: string): Promise<void> {
    this.set({ viewing: conversationId });
    if (!this.state.timelines[conversationId]?.items.length) await this.olderPage(conversationId);
    await this.markRead(conversationId);
  }

  close(): void {
    this.set({ viewing: undefined });
  }

  /** One more page of history before the oldest message shown. */
  async olderPage(conversationId: string): Promise<void> {
    const timeline = this.state.timelines[conversationId] ?? emptyTimeline();
    if (!timeline.hasMore || this.state.net !== "online") return;
    const reply = expect(
      await this.net.request({ case: "history", value: { conversationId, beforeSeq: oldestSeq(timeline), limit: Number(PAGE) } }),
      "historyResp",
    );
    const me = this.state.session?.userId ?? 0n;
    const next = merge(this.state.timelines[conversationId] ?? emptyTimeline(), reply.messages.map(fromChat), me);
    const newest = next.items.filter((i) => i.seq > 0n).at(-1);
    this.set({
      timelines: { ...this.state.timelines, [conversationId]: { ...next, hasMore: reply.hasMore } },
      // A conversation opened from elsewhere (a new group) joins the list.
      chats: newest ? onMessage(this.state.chats, newest, me, this.state.viewing) : this.state.chats,
    });
    void this.loadProfiles(reply.messages.map((m) => m.senderId));
  }

  async markRead(conversationId: string): Promise<void> {
    const chat = this.state.chats.find((c) => c.id === conversationId);
    if (!chat || chat.lastSeq === 0n || this.state.net !== "online") return;
    const reply = expect(
      await this.net.request({ case: "markRead", value: { conversationId, seq: chat.lastSeq } }),
      "markReadResp",
    );
    this.set({ chats: onRead(this.state.chats, conversationId, reply.readSeq) });
  }

  /** Sends to a 1:1 or group conversation; shown pending at once. */
  send(conversationId: string, what: { text?: string; media?: Media & { type: MessageType }; location?: Place }): void {
    const session = this.state.session;
    if (!session) return;
    const clientMessageId = randomId();
    const type = what.media ? what.media.type : what.location ? MessageType.LOCATION : MessageType.TEXT;
    const groupId = groupOf(conversationId);
    const body: Body = {
      case: "send",
      value: {
        receiverId: groupId ? 0n : peerOf(conversationId, session.userId),
        groupId,
        messageType: type,
        content: what.text ?? "",
        clientMessageId,
        // A browser cannot learn a link's size without fetching it (the
        // page's CSP allows no cross-origin fetch): 1 byte stands for "unknown".
        media: what.media
          ? { ...what.media, sizeBytes: 1n }
          : undefined,
        location: what.location,
      },
    } as Body;
    const item: Item = {
      conversationId, seq: 0n, clientMessageId, senderId: session.userId, type, content: what.text ?? "",
      media: what.media, location: what.location, sentAtMs: Date.now(), status: "pending", recalled: false,
    };
    this.updateTimeline(conversationId, (timeline) => addPending(timeline, item));
    this.unsent.set(clientMessageId, { conversationId, body, auto: true });
    void this.deliver(clientMessageId);
  }

  /** Sends a failed message again, with the same client_message_id. */
  retry(clientMessageId: bigint): void {
    const unsent = this.unsent.get(clientMessageId);
    if (!unsent) return;
    this.updateTimeline(unsent.conversationId, (timeline) => retrying(timeline, clientMessageId));
    void this.deliver(clientMessageId);
  }

  private async deliver(clientMessageId: bigint): Promise<void> {
    const unsent = this.unsent.get(clientMessageId);
    if (!unsent) return;
    const { conversationId } = unsent;
    try {
      const reply = expect(await this.net.request(unsent.body as { case: "send"; value: object }), "sendResp");
      this.unsent.delete(clientMessageId);
      const done = this.updateTimeline(conversationId, (timeline) =>
        acked(timeline, clientMessageId, reply.seq, Number(reply.sentAtMs)),
      );
      followOn(this.synced, conversationId, reply.seq);
      const item = done.items.find((i) => i.seq === reply.seq);
      if (item && this.state.session) {
        this.set({ chats: onMessage(this.state.chats, item, this.state.session.userId, this.state.viewing) });
      }
      this.persistSoon();
    } catch (error) {
      // A lost connection (or a "later" from the node) resends after the
      // reconnect; a refusal waits for the person's retry.
      unsent.auto = !(error instanceof ServerError && !error.retryable);
      this.updateTimeline(conversationId, (timeline) => failed(timeline, clientMessageId, errorText(error)));
    }
  }

  async recall(conversationId: string, seq: bigint): Promise<void> {
    await this.net.request({ case: "recall", value: { conversationId, seq } });
    this.updateTimeline(conversationId, (timeline) => recalled(timeline, seq));
  }

  typing(conversationId: string, typing: boolean): void {
    const me = this.state.session?.userId ?? 0n;
    const peerId = peerOf(conversationId, me);
    if (peerId > 0n) this.connection?.tell({ case: "typing", value: { peerId, typing } });
  }

  isTyping(conversationId: string): boolean {
    return (this.state.typing[conversationId] ?? 0) > Date.now();
  }

  /** The 1:1 conversation with a user (made on first send). */
  chatWith(peerId: bigint): string {
    return directId(this.state.session?.userId ?? 0n, peerId);
  }

  // ---- people ----

  name(userId: bigint): string {
    const profile = this.state.profiles[String(userId)];
    return profile ? profile.nickname || profile.username : `user ${userId}`;
  }

  /** A conversation's name: the group's, or the other person's. */
  titleOf(conversationId: string): string {
    const groupId = groupOf(conversationId);
    if (groupId > 0n) return this.state.groups.find((g) => g.groupId === groupId)?.name ?? `group ${groupId}`;
    return this.name(peerOf(conversationId, this.state.session?.userId ?? 0n));
  }

  async loadProfiles(userIds: bigint[]): Promise<void> {
    // Pushes and pages name the same senders over and over: ask once each.
    const missing = [...new Set(userIds)].filter(
      (id) => id > 0n && !this.state.profiles[String(id)] && !this.profilesAsked.has(id),
    );
    if (!missing.length || this.state.net === "signed-out") return;
    for (const id of missing) this.profilesAsked.add(id);
    const found = await Promise.all(
      missing.map((userId) =>
        this.net.request({ case: "getUser", value: { userId } }).then((b) => expect(b, "userProfile"), () => undefined),
      ),
    );
    for (const id of missing) this.profilesAsked.delete(id);
    const profiles = { ...this.state.profiles };
    for (const p of found) if (p) profiles[String(p.userId)] = { userId: p.userId, username: p.username, nickname: p.nickname, avatarUrl: p.avatarUrl };
    this.set({ profiles });
  }

  async loadFriends(): Promise<void> {
    const reply = expect(await this.net.request({ case: "friends", value: {} }), "friendsResp");
    this.set({ friends: reply.friends, incoming: reply.incoming, outgoing: reply.outgoing, blocked: reply.blocked });
    const ids = reply.friends.map((f) => f.userId);
    await this.loadProfiles([...ids, ...reply.incoming.map((r) => r.fromUserId), ...reply.outgoing.map((r) => r.toUserId)]);
    if (ids.length) {
      const list = expect(await this.net.request({ case: "presenceQuery", value: { userIds: ids } }), "presenceList");
      const presence = { ...this.state.presence };
      for (const p of list.users) presence[String(p.userId)] = p.state;
      this.set({ presence });
    }
  }

  async search(query: string) {
    return expect(await this.net.request({ case: "searchUsers", value: { query, limit: 20 } }), "searchUsersResp").users;
  }

  async requestFriend(userId: bigint, note = ""): Promise<void> {
    await this.net.request({ case: "friendRequest", value: { userId, note } });
    await this.loadFriends();
  }

  async answerFriend(fromUserId: bigint, accept: boolean): Promise<void> {
    await this.net.request({ case: "respondFriend", value: { fromUserId, accept } });
    await this.loadFriends();
  }

  async deleteFriend(userId: bigint): Promise<void> {
    await this.net.request({ case: "deleteFriend", value: { userId } });
    await this.loadFriends();
  }

  async block(userId: bigint, block: boolean): Promise<void> {
    await this.net.request({ case: "block", value: { userId, block } });
    await this.loadFriends();
  }

  online(userId: bigint): boolean {
    return this.state.presence[String(userId)] === PresenceState.ONLINE;
  }

  // ---- groups ----

  async loadGroups(): Promise<void> {
    const reply = expect(await this.net.request({ case: "myGroups", value: { limit: 200 } }), "myGroupsResp");
    this.set({ groups: reply.groups });
  }

  async createGroup(name: string, memberIds: bigint[]): Promise<string> {
    const reply = expect(
      await this.net.request({ case: "createGroup", value: { groupName: name, memberIds } }),
      "createGroupResp",
    );
    await this.loadGroups();
    return reply.conversationId || groupChatId(reply.groupId);
  }

  async members(groupId: bigint): Promise<GroupMember[]> {
    const reply = expect(await this.net.request({ case: "groupMembers", value: { groupId, limit: 500 } }), "groupMembersResp");
    await this.loadProfiles(reply.members.map((m) => m.userId));
    return reply.members;
  }

  async groupChange(change: Body): Promise<void> {
    await this.net.request(change as { case: "addMembers"; value: object });
    await this.loadGroups();
  }

  // ---- me ----

  async updateProfile(nickname: string, avatarUrl: string): Promise<void> {
    await this.net.request({ case: "updateProfile", value: { nickname, avatarUrl } });
    const me = this.state.session?.userId ?? 0n;
    const profiles = { ...this.state.profiles };
    delete profiles[String(me)];
    this.set({ profiles });
    await this.loadProfiles([me]);
  }

  async devices() {
    return expect(await this.net.request({ case: "listDevices", value: {} }), "listDevicesResp").devices;
  }

  async kick(deviceId: string): Promise<void> {
    await this.net.request({ case: "kickDevice", value: { deviceId } });
  }

  async changePassword(oldPassword: string, newPassword: string): Promise<number> {
    const reply = expect(
      await this.net.request({ case: "changePassword", value: { oldPassword, newPassword } }),
      "changePasswordResp",
    );
    return reply.devicesSignedOut;
  }
}
