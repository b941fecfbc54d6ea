//! The one table of plans: every limit and price of a tier comes from here (the original
//! had three disagreeing tables). The defaults are the original's `TIER_LIMITS`; the
//! configuration (`billing.plans`) may replace them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chrono::{DateTime, Utc};

use super::{BillingAccount, Tier};

/// One tier's limits and price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub tier: Tier,
    /// Workflows per billing period; `None`: unlimited.
    pub monthly_workflows: Option<u32>,
    /// Tasks agents may hold at once for the organization; `None`: unlimited.
    pub concurrent_agents: Option<u32>,
    /// Monthly price (one-time for `lifetime`), in cents.
    pub price_cents: i64,
}

/// Every tier's plan, and what a workflow beyond the quota costs in credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Plans {
    pub plans: Vec<Plan>,
    pub workflow_price_cents: i64,
}

impl Default for Plans {
    fn default() -> Self {
        let plan = |tier, monthly_workflows, concurrent_agents, price_cents| Plan {
            tier,
            monthly_workflows,
            concurrent_agents,
            price_cents,
        };
        Self {
            plans: vec![
                plan(Tier::Free, Some(5), Some(1), 0),
                plan(Tier::Pro, Some(50), Some(3), 29_900),
                plan(Tier::Team, None, Some(10), 99_900),
                plan(Tier::Enterprise, None, None, 0),
                plan(Tier::Lifetime, Some(50), Some(5), 49_900),
            ],
            workflow_price_cents: 1_000,
        }
    }
}

/// Why a configured table of plans is refused (at start, before anything is served).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlansError {
    #[error("tier {0} has more than one plan")]
    DuplicateTier(Tier),
    #[error("tier {tier}'s price_cents is {price_cents}: a price is 0 or more")]
    NegativePrice { tier: Tier, price_cents: i64 },
    #[error("workflow_price_cents is {0}: a price is 0 or more")]
    NegativeWorkflowPrice(i64),
}

impl Plans {
    /// Refuses a table whose plans contradict one another or charge less than nothing:
    /// one plan per tier (which one would `of` pick?), no negative price (a negative
    /// workflow price would add credits for every workflow beyond the quota).
    pub fn check(&self) -> Result<(), PlansError> {
        for (at, plan) in self.plans.iter().enumerate() {
            if self.plans[..at].iter().any(|p| p.tier == plan.tier) {
                return Err(PlansError::DuplicateTier(plan.tier));
            }
            if plan.price_cents < 0 {
                return Err(PlansError::NegativePrice {
                    tier: plan.tier,
                    price_cents: plan.price_cents,
                });
            }
        }
        if self.workflow_price_cents < 0 {
            return Err(PlansError::NegativeWorkflowPrice(self.workflow_price_cents));
        }
        Ok(())
    }

    /// Tasks an organization's agents may hold at once at `now`: its plan's
    /// `concurrent_agents` (unlimited: `usize::MAX`), none while it is suspended.
    pub fn concurrency_cap(&self, account: &BillingAccount, now: DateTime<Utc>) -> usize {
        if account.is_suspended(now) {
            return 0;
        }
        self.of(account.effective_tier())
            .concurrent_agents
            .map_or(usize::MAX, |n| n as usize)
    }

    /// The plan of `tier`; a tier missing from a configured table gets the free plan's
    /// limits (never more than was paid for).
    pub fn of(&self, tier: Tier) -> Plan {
        self.plans
            .iter()
            .find(|p| p.tier == tier)
            .or_else(|| self.plans.iter().find(|p| p.tier == Tier::Free))
            .cloned()
            .unwrap_or(Plan {
                tier,
                monthly_workflows: Some(0),
                concurrent_agents: Some(1),
                price_cents: 0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_has_one_plan() {
        let plans = Plans::default();
        for tier in Tier::ALL {
            assert_eq!(
                plans.plans.iter().filter(|p| p.tier == tier).count(),
                1,
                "{tier}"
            );
            assert_eq!(plans.of(tier).tier, tier);
        }
        assert_eq!(plans.of(Tier::Pro).monthly_workflows, Some(50));
        assert_eq!(plans.of(Tier::Team).concurrent_agents, Some(10));
        assert_eq!(plans.check(), Ok(()));
    }

    #[test]
    fn a_table_with_a_tier_twice_or_a_negative_price_is_refused() {
        let mut twice = Plans::default();
        twice.plans.push(twice.of(Tier::Pro));
        assert_eq!(twice.check(), Err(PlansError::DuplicateTier(Tier::Pro)));
        let mut negative = Plans::default();
        negative.plans[1].price_cents = -1;
        assert_eq!(
            negative.check(),
            Err(PlansError::NegativePrice {
                tier: negative.plans[1].tier,
                price_cents: -1
            })
        );
        let refunding = Plans {
            workflow_price_cents: -500,
            ..Plans::default()
        };
        assert_eq!(
            refunding.check(),
            Err(PlansError::NegativeWorkflowPrice(-500))
        );
    }
}
