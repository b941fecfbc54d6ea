use super::Tier;
use crate::common::{DomainError, ErrorKind};

/// Every rule that can refuse a billing command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BillingError {
    #[error("the account belongs to another organization")]
    WrongOrganization,
    #[error("a credit purchase must be of a positive amount")]
    NonPositiveCredits,
    #[error("the account is suspended for a failed payment; pay the open invoice to resume")]
    Suspended,
    #[error(
        "the {tier} plan's {quota} workflows this period are used and the credits \
         ({credits_cents} cents) do not cover another ({price_cents} cents); upgrade the plan \
         or buy credits"
    )]
    QuotaExceeded {
        tier: Tier,
        quota: u32,
        credits_cents: i64,
        price_cents: i64,
    },
}

impl DomainError for BillingError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongOrganization => ErrorKind::Conflict,
            Self::NonPositiveCredits => ErrorKind::Invalid,
            Self::Suspended | Self::QuotaExceeded { .. } => ErrorKind::PaymentRequired,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::WrongOrganization => "wrong_organization",
            Self::NonPositiveCredits => "non_positive_credits",
            Self::Suspended => "account_suspended",
            Self::QuotaExceeded { .. } => "workflow_quota_exceeded",
        }
    }
}
