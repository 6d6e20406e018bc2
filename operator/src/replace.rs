//! Member replacement (`spec.replacement`): what the status says about it.
//!
//! The steps are the planner's ([`crate::plan`], concern 2b): `ReplaceMember` removes a
//! voter that failed to start [`crate::plan::REPLACE_AFTER_FAILED_STARTS`] times in a
//! row (only while the other voters are a healthy quorum), `AddLearner` adds it back
//! under the same name and peer URL, `WipeMember` deletes its data so it starts empty,
//! and the learner concern promotes it once caught up. `status.replacement` carries the
//! replacement from step to step (so a restarted operator goes on where it was), and the
//! `MemberReplaced` condition says what happened and why.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::{RaftClusterStatus, ReplacementStatus};
use crate::plan::{rfc3339_from_ms, Action, Plan};

/// The condition about the last replacement.
pub const CONDITION: &str = "MemberReplaced";

fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    on: bool,
    reason: &str,
    message: String,
    now_ms: u64,
) {
    crate::backup::set_typed_condition(CONDITION, conditions, previous, on, reason, message, now_ms);
}

/// Writes this round's replacement into the status. `done` is true when the step
/// carried out this round succeeded.
pub fn record(
    status: &mut RaftClusterStatus,
    previous: Option<&RaftClusterStatus>,
    plan: &Plan,
    done: bool,
    now_ms: u64,
) {
    let conditions = previous.map_or(&[][..], |p| &p.conditions[..]);
    status.replacement = previous.and_then(|p| p.replacement.clone());
    let keep = |status: &mut RaftClusterStatus| {
        if let Some(c) = conditions.iter().find(|c| c.type_ == CONDITION) {
            status.conditions.retain(|x| x.type_ != CONDITION);
            status.conditions.push(c.clone());
        }
    };
    let mut changed = false;
    // Finished: the member votes again, healthy, on its new data.
    if let Some(r) = status.replacement.clone() {
        let replaced = r.wiped
            && plan
                .members
                .iter()
                .any(|m| m.ordinal == Some(r.ordinal) && !m.learner && m.healthy);
        if replaced {
            set_condition(
                &mut status.conditions,
                conditions,
                true,
                "Replaced",
                format!(
                    "{} was replaced (since {}): it started empty, caught up and votes again; why: {}",
                    r.member, r.since, r.reason
                ),
                now_ms,
            );
            status.replacement = None;
            changed = true;
        }
    }
    match (&plan.action, status.replacement.clone()) {
        (
            Some(Action::ReplaceMember {
                name,
                ordinal,
                reason,
                ..
            }),
            None,
        ) if done => {
            status.replacement = Some(ReplacementStatus {
                member: name.clone(),
                ordinal: *ordinal,
                reason: reason.clone(),
                wiped: false,
                since: rfc3339_from_ms(now_ms),
            });
            set_condition(
                &mut status.conditions,
                conditions,
                false,
                "Replacing",
                format!("{name} is being replaced: removed from the configuration; {reason}"),
                now_ms,
            );
        }
        (Some(Action::WipeMember { ordinal }), Some(mut r)) if done && *ordinal == r.ordinal => {
            r.wiped = true;
            set_condition(
                &mut status.conditions,
                conditions,
                false,
                "Replacing",
                format!(
                    "{} is being replaced: added back as a learner, its data deleted; it is promoted once caught up ({})",
                    r.member, r.reason
                ),
                now_ms,
            );
            status.replacement = Some(r);
        }
        _ if !changed => keep(status),
        _ => {}
    }
}
