//! Column types whose natural form differs per backend, wrapped so that one query text and
//! one bind call serve both.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// `sessions.providers_tried`: a list of provider names, stored as `text[]` on PostgreSQL and
/// as a JSON array of strings in `TEXT` on SQLite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProviderList(pub(crate) Vec<String>);

impl From<ProviderList> for Vec<String> {
    fn from(list: ProviderList) -> Self {
        list.0
    }
}

impl Type<Postgres> for ProviderList {
    fn type_info() -> PgTypeInfo {
        <Vec<String> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <Vec<String> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for ProviderList {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Vec<String> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for ProviderList {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(ProviderList(<Vec<String> as Decode<Postgres>>::decode(
            value,
        )?))
    }
}

impl Type<Sqlite> for ProviderList {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for ProviderList {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        let json = serde_json::to_string(&self.0)?;
        <String as Encode<Sqlite>>::encode(json, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for ProviderList {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let json = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(ProviderList(serde_json::from_str(json)?))
    }
}
