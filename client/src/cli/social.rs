//! The `friends` and `groups` commands: each action a call or two on the
//! client, printed as a line of text or JSON.

use ourchat_client::Client;
use ourchat_protocol::pb;
use serde_json::json;

use crate::args::{FriendsAction, GroupsAction};
use crate::output::{name_of, Output};

/// Carries out one `groups` action.
pub(crate) async fn groups(
    client: &Client,
    out: &Output,
    action: &GroupsAction,
) -> anyhow::Result<()> {
    let ids_of = |names: &[String]| {
        let names = names.to_vec();
        async move {
            let mut ids = Vec::with_capacity(names.len());
            for name in &names {
                ids.push(client.find_user(name).await?.user_id);
            }
            anyhow::Ok(ids)
        }
    };
    let role_name = |role: i32| {
        pb::GroupRole::try_from(role)
            .map(|r| r.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "member".into())
    };
    let print_group = |g: &pb::GroupInfo| {
        out.line(
            json!({"event": "group", "group_id": g.group_id.to_string(), "name": g.name,
                   "description": g.description, "owner_id": g.owner_id.to_string(),
                   "members": g.member_count, "my_role": role_name(g.my_role)}),
            format!(
                "{:<20} {:<24} {} members, I am {}",
                g.group_id,
                g.name,
                g.member_count,
                role_name(g.my_role)
            ),
        )
    };
    let (verb, group, seq) = match action {
        GroupsAction::List => {
            let mut after = 0;
            loop {
                let page = client.my_groups(after, 100).await?;
                for g in &page.groups {
                    print_group(g);
                    after = g.group_id;
                }
                if !page.has_more {
                    return Ok(());
                }
            }
        }
        GroupsAction::Create {
            name,
            members,
            description,
        } => {
            let ids = ids_of(members).await?;
            let group = client.create_group(name, &ids, description).await?;
            ("created", group, 1)
        }
        GroupsAction::Info { group } => {
            print_group(&client.group(*group).await?);
            return Ok(());
        }
        GroupsAction::Members { group } => {
            let mut names = std::collections::HashMap::new();
            let mut after = 0;
            loop {
                let page = client.group_members(*group, after, 500).await?;
                for m in &page.members {
                    let who = name_of(client, &mut names, m.user_id).await;
                    out.line(
                        json!({"event": "member", "user": who, "user_id": m.user_id.to_string(),
                               "role": role_name(m.role), "join_seq": m.join_seq}),
                        format!("{who:<16} {}", role_name(m.role)),
                    );
                    after = m.user_id;
                }
                if !page.has_more {
                    return Ok(());
                }
            }
        }
        GroupsAction::Add { group, users } => {
            let seq = client.add_members(*group, &ids_of(users).await?).await?;
            ("added", *group, seq)
        }
        GroupsAction::Remove { group, users } => {
            let seq = client.remove_members(*group, &ids_of(users).await?).await?;
            ("removed", *group, seq)
        }
        GroupsAction::Leave { group } => ("left", *group, client.leave_group(*group).await?),
        GroupsAction::Admin { group, user, unset } => {
            let user_id = client.find_user(user).await?.user_id;
            let seq = client.set_admin(*group, user_id, !unset).await?;
            ("role_changed", *group, seq)
        }
        GroupsAction::Transfer { group, user } => {
            let user_id = client.find_user(user).await?.user_id;
            let seq = client.transfer_owner(*group, user_id).await?;
            ("transferred", *group, seq)
        }
        GroupsAction::Update {
            group,
            name,
            description,
            avatar_url,
        } => {
            let request = pb::UpdateGroupRequest {
                group_id: *group,
                name: name.clone(),
                description: description.clone(),
                avatar_url: avatar_url.clone(),
            };
            let seq = client
                .group_change(ourchat_protocol::Body::UpdateGroup(request))
                .await?;
            ("updated", *group, seq)
        }
        GroupsAction::Dissolve { group } => {
            ("dissolved", *group, client.dissolve_group(*group).await?)
        }
        GroupsAction::Send { group, text } => {
            let ack = client.send_group_text(*group, text).await?;
            ("sent", *group, ack.seq)
        }
        GroupsAction::History { group, limit } => {
            let mut names = std::collections::HashMap::new();
            let request = pb::HistoryRequest {
                conversation_id: format!("sg_{group}"),
                limit: *limit,
                ..Default::default()
            };
            let page = client.history_of(request).await?;
            for message in page.messages.iter().rev() {
                let from = name_of(client, &mut names, message.sender_id).await;
                out.message(message, &from);
            }
            return Ok(());
        }
    };
    out.line(
        json!({"event": verb, "group_id": group.to_string(), "seq": seq}),
        format!("{verb}: group {group} (seq {seq})"),
    );
    Ok(())
}

/// Carries out one `friends` action.
pub(crate) async fn friends(
    client: &Client,
    out: &Output,
    action: &FriendsAction,
) -> anyhow::Result<()> {
    let id_of = |name: &str| {
        let name = name.to_string();
        async move { anyhow::Ok(client.find_user(&name).await?.user_id) }
    };
    let (verb, user) = match action {
        FriendsAction::List => {
            let listed = client.friends().await?;
            let mut names = std::collections::HashMap::new();
            for f in &listed.friends {
                let state = if f.online { "online" } else { "offline" };
                out.line(
                    json!({"event": "friend", "user": f.username, "user_id": f.user_id.to_string(), "online": f.online}),
                    format!("friend   {:<16} {state}", f.username),
                );
            }
            for r in &listed.incoming {
                let who = name_of(client, &mut names, r.from_user_id).await;
                out.line(
                    json!({"event": "request_in", "from": who, "note": r.note}),
                    format!("request  from {who}: {}", r.note),
                );
            }
            for r in &listed.outgoing {
                let who = name_of(client, &mut names, r.to_user_id).await;
                out.line(
                    json!({"event": "request_out", "to": who}),
                    format!("request  to {who} (pending)"),
                );
            }
            for id in &listed.blocked {
                let who = name_of(client, &mut names, *id).await;
                out.line(
                    json!({"event": "blocked", "user": who}),
                    format!("blocked  {who}"),
                );
            }
            return Ok(());
        }
        FriendsAction::Search { prefix } => {
            for u in client.search_users(prefix, 50, 0).await?.users {
                out.line(
                    json!({"event": "user", "user": u.username, "user_id": u.user_id.to_string(), "nickname": u.nickname}),
                    format!("{:<16} {}", u.username, u.nickname),
                );
            }
            return Ok(());
        }
        FriendsAction::Add { user, note } => {
            client.request_friend(id_of(user).await?, note).await?;
            ("requested", user)
        }
        FriendsAction::Accept { user } => {
            client.answer_friend(id_of(user).await?, true).await?;
            ("accepted", user)
        }
        FriendsAction::Reject { user } => {
            client.answer_friend(id_of(user).await?, false).await?;
            ("rejected", user)
        }
        FriendsAction::Delete { user } => {
            client.delete_friend(id_of(user).await?).await?;
            ("deleted", user)
        }
        FriendsAction::Block { user } => {
            client.block(id_of(user).await?, true).await?;
            ("blocked", user)
        }
        FriendsAction::Unblock { user } => {
            client.block(id_of(user).await?, false).await?;
            ("unblocked", user)
        }
    };
    out.line(
        json!({"event": verb, "user": user}),
        format!("{verb} {user}"),
    );
    Ok(())
}
