//! The default table name.

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
    use super::default_table_name;

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
