//! Wire types shared by the resource routes: pagination, partial updates, validation helpers.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`) or a value.
/// Use with `#[serde(default, deserialize_with = "nullable")]` on PATCH bodies.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Deserializes a field that may be absent (`None`) or a value, but not `null`: for PATCH
/// fields that cannot be cleared. Use with `#[serde(default, deserialize_with = "non_null")]`.
pub fn non_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom("must not be null")),
    }
}

/// A PATCH body: the names of the fields it sets, for the audit log (names, never values).
pub trait PatchFields {
    fn fields(&self) -> Vec<&'static str>;
}

/// Implements [`PatchFields`] for a PATCH body from the names of its fields (each an
/// `Option`); with `=> Row`, also `Row::apply`, which sets each field present on the row.
macro_rules! patch {
    ($patch:ty { $($f:ident),+ $(,)? }) => {
        impl $crate::model::PatchFields for $patch {
            fn fields(&self) -> Vec<&'static str> {
                let mut names = Vec::new();
                $( if self.$f.is_some() { names.push(stringify!($f)); } )+
                names
            }
        }
    };
    ($patch:ty => $row:ty { $($f:ident),+ $(,)? }) => {
        $crate::model::patch!($patch { $($f),+ });
        impl $row {
            /// Sets each field present in the PATCH.
            pub fn apply(&mut self, p: $patch) {
                $( if let Some(v) = p.$f { self.$f = v; } )+
            }
        }
    };
}
pub(crate) use patch;

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items matching the filters, over all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_next: bool,
    pub has_prev: bool,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, total: i64, q: &ListQuery) -> Self {
        let (limit, offset) = (q.limit(), q.offset());
        Self {
            has_next: offset + (items.len() as i64) < total,
            has_prev: offset > 0,
            items,
            total,
            limit,
            offset,
        }
    }
}

/// `limit` (1–100, default 10), `offset` (≥ 0), `category` (exact), `search` (case-insensitive
/// substring of the name, display name or description).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(minimum = 1, maximum = 100, default = 10)]
    pub limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    pub offset: Option<i64>,
    pub category: Option<String>,
    pub search: Option<String>,
}

impl ListQuery {
    pub const DEFAULT_LIMIT: i64 = 10;

    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(limit) = self.limit {
            if !(1..=100).contains(&limit) {
                return Err(ApiError::invalid_param(
                    "limit",
                    "must be between 1 and 100",
                ));
            }
        }
        if self.offset.is_some_and(|o| o < 0) {
            return Err(ApiError::invalid_param("offset", "must not be negative"));
        }
        Ok(())
    }

    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(Self::DEFAULT_LIMIT)
    }

    /// The `category` filter; an empty value filters nothing.
    pub fn category(&self) -> Option<&str> {
        self.category.as_deref().filter(|c| !c.is_empty())
    }

    pub fn offset(&self) -> i64 {
        self.offset.unwrap_or(0)
    }

    /// The `search` term as an `ILIKE` pattern, with `%`, `_` and `\` escaped.
    pub fn search_pattern(&self) -> Option<String> {
        self.search.as_deref().filter(|s| !s.is_empty()).map(|s| {
            let escaped = s
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

/// Text rules shared by the resources.
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.chars().count() > max_chars {
        return Err(ApiError::invalid_field(
            field,
            format_args!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

pub fn check_required_text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    check_text(field, value, max_chars)
}

/// snake_case names of tools, playbooks and FAQs: `^[a-z][a-z0-9_]{0,99}$`.
pub fn check_snake_name(field: &str, value: &str) -> Result<(), ApiError> {
    let mut chars = value.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && value.len() <= 100
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            "must be snake_case: ^[a-z][a-z0-9_]{0,99}$",
        ))
    }
}

/// A path segment naming a resource by UUID or by snake_case name.
pub enum IdOrName {
    Id(uuid::Uuid),
    Name(String),
}

/// Path segments (`/playbooks/{id}`) name an entry by UUID or by name.
impl<'de> Deserialize<'de> for IdOrName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|raw| Self::parse(&raw))
    }
}

impl IdOrName {
    pub fn parse(raw: &str) -> Self {
        match uuid::Uuid::parse_str(raw) {
            Ok(id) => Self::Id(id),
            Err(_) => Self::Name(raw.to_owned()),
        }
    }

    /// Bind values for `WHERE (id = $1 OR name = $2)`.
    pub fn binds(&self) -> (Option<uuid::Uuid>, Option<&str>) {
        match self {
            Self::Id(id) => (Some(*id), None),
            Self::Name(name) => (None, Some(name)),
        }
    }
}
