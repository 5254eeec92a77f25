//! The default table name, and the column names of sqlx's `rename_all`.

use heck::{ToKebabCase, ToLowerCamelCase, ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};

/// A case of sqlx's `#[sqlx(rename_all = "...")]`, applied to every field without its
/// own `#[sqlx(rename = "...")]`.
///
/// The names and the conversions are sqlx 0.8's (`sqlx-macros-core`, `derives/mod.rs`),
/// through the same `heck` functions, so that a column is named as `sqlx::FromRow`
/// reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RenameAll {
    /// `"lowercase"`.
    Lower,
    /// `"snake_case"`.
    Snake,
    /// `"UPPERCASE"`.
    Upper,
    /// `"SCREAMING_SNAKE_CASE"`.
    ScreamingSnake,
    /// `"kebab-case"`.
    Kebab,
    /// `"camelCase"`.
    Camel,
    /// `"PascalCase"`.
    Pascal,
}

impl RenameAll {
    /// Every case with its name in the attribute.
    pub(crate) const ALL: [(&'static str, RenameAll); 7] = [
        ("lowercase", RenameAll::Lower),
        ("snake_case", RenameAll::Snake),
        ("UPPERCASE", RenameAll::Upper),
        ("SCREAMING_SNAKE_CASE", RenameAll::ScreamingSnake),
        ("kebab-case", RenameAll::Kebab),
        ("camelCase", RenameAll::Camel),
        ("PascalCase", RenameAll::Pascal),
    ];

    /// The case named `name`, as sqlx spells it.
    pub(crate) fn from_name(name: &str) -> Option<RenameAll> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    /// The column of the field `field` (already without `r#`).
    pub(crate) fn apply(self, field: &str) -> String {
        match self {
            RenameAll::Lower => field.to_lowercase(),
            RenameAll::Snake => field.to_snake_case(),
            RenameAll::Upper => field.to_uppercase(),
            RenameAll::ScreamingSnake => field.to_shouty_snake_case(),
            RenameAll::Kebab => field.to_kebab_case(),
            RenameAll::Camel => field.to_lower_camel_case(),
            RenameAll::Pascal => field.to_upper_camel_case(),
        }
    }
}

/// The default table for a struct: its name in snake_case with an `s` appended.
///
/// This is Diesel's rule, kept to the letter so that a schema shared with Diesel agrees:
/// an underscore goes before every uppercase letter but the first, so `TodoItem` is
/// `todo_items` and an acronym is split letter by letter (`HTTPLog` is `h_t_t_p_logs`;
/// set `#[sync(table = "...")]` to choose otherwise).
pub(crate) fn default_table_name(struct_name: &str) -> String {
    let mut table = String::with_capacity(struct_name.len() + 4);
    for (i, c) in struct_name.chars().enumerate() {
        if i > 0 && c.is_uppercase() {
            table.push('_');
        }
        table.extend(c.to_lowercase());
    }
    table.push('s');
    table
}

#[cfg(test)]
mod tests {
    use super::{default_table_name, RenameAll};

    #[test]
    fn rename_all_cases_are_sqlxs() {
        let column = |case, field| RenameAll::from_name(case).unwrap().apply(field);
        assert_eq!(column("lowercase", "dueDate"), "duedate");
        assert_eq!(column("snake_case", "dueDate"), "due_date");
        assert_eq!(column("UPPERCASE", "due_date"), "DUE_DATE");
        assert_eq!(column("SCREAMING_SNAKE_CASE", "dueDate"), "DUE_DATE");
        assert_eq!(column("kebab-case", "due_date"), "due-date");
        assert_eq!(column("camelCase", "due_date"), "dueDate");
        assert_eq!(column("PascalCase", "due_date"), "DueDate");
        assert_eq!(column("camelCase", "html_url2"), "htmlUrl2");
        assert_eq!(RenameAll::from_name("Snake_Case"), None);
    }

    #[test]
    fn one_word() {
        assert_eq!(default_table_name("Todo"), "todos");
    }

    #[test]
    fn camel_case_words_are_split() {
        assert_eq!(default_table_name("TodoItem"), "todo_items");
        assert_eq!(
            default_table_name("UserAccountSetting"),
            "user_account_settings"
        );
    }

    #[test]
    fn plural_is_always_a_plain_s() {
        assert_eq!(default_table_name("Category"), "categorys");
        assert_eq!(default_table_name("Address"), "addresss");
    }

    #[test]
    fn acronyms_split_per_letter_like_diesel() {
        assert_eq!(default_table_name("HTTPLog"), "h_t_t_p_logs");
    }

    #[test]
    fn lowercase_underscores_and_digits_are_kept() {
        assert_eq!(default_table_name("todo"), "todos");
        assert_eq!(default_table_name("todo_item"), "todo_items");
        assert_eq!(default_table_name("Todo2Item"), "todo2_items");
    }

    #[test]
    fn non_ascii() {
        assert_eq!(default_table_name("ÉtéÉvent"), "été_évents");
    }
}
