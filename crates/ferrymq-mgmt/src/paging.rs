//! Paging, sorting and filtering of list endpoints, as RabbitMQ's management API does them
//! (`page`, `page_size`, `name`, `use_regex`, `sort`, `sort_reverse`, `columns`).

use crate::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest page RabbitMQ serves.
pub const MAX_PAGE_SIZE: usize = 500;
/// Longest `name` filter regex accepted (its compiled size is bounded too).
const MAX_FILTER_LEN: usize = 1024;

/// A predicate over object names (the `name` filter).
pub type NameFilter = Box<dyn Fn(&str) -> bool + Send>;

/// The list query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// 1-based page number; without it the whole list is returned as an array.
    pub page: Option<String>,
    /// Items per page (default 100, at most [`MAX_PAGE_SIZE`]).
    pub page_size: Option<String>,
    /// Keep items whose name contains this (or matches it as a regex).
    pub name: Option<String>,
    /// Whether `name` is a regex.
    pub use_regex: Option<String>,
    /// A field (dotted path) to sort by.
    pub sort: Option<String>,
    /// Reverse the sort.
    pub sort_reverse: Option<String>,
    /// Fields (dotted paths, comma separated) to keep in each item.
    pub columns: Option<String>,
    /// `disable_stats=true` leaves out message stats (faster).
    pub disable_stats: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| s == "true")
}

impl ListQuery {
    /// Whether the caller asked to leave statistics out.
    pub fn no_stats(&self) -> bool {
        truthy(&self.disable_stats)
    }

    /// A name filter as a predicate.
    pub fn name_filter(&self) -> ApiResult<NameFilter> {
        let Some(f) = self.name.clone().filter(|s| !s.is_empty()) else {
            return Ok(Box::new(|_| true));
        };
        if !truthy(&self.use_regex) {
            let f = f.to_lowercase();
            return Ok(Box::new(move |n: &str| n.to_lowercase().contains(&f)));
        }
        if f.len() > MAX_FILTER_LEN {
            return Err(ApiError::BadRequest("name filter is too long".into()));
        }
        let re = regex::RegexBuilder::new(&f)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ApiError::BadRequest(format!("invalid name regex: {e}")))?;
        Ok(Box::new(move |n: &str| re.is_match(n)))
    }

    /// Whether the list only needs its name order (no other sort key): then a page can be
    /// cut before its items are built, which keeps 100,000-queue lists fast.
    pub fn name_order_only(&self) -> bool {
        matches!(self.sort.as_deref(), None | Some("") | Some("name"))
    }

    fn page_numbers(&self, filtered: usize) -> ApiResult<Option<(usize, usize, usize)>> {
        let Some(page) = &self.page else {
            return Ok(None);
        };
        let size_text = self.page_size.as_deref().unwrap_or("undefined");
        let invalid = |page: &str| {
            ApiError::Invalid(
                "invalid_pagination_parameters",
                format!("Invalid pagination parameters: page number {page}, page size {size_text}"),
            )
        };
        let Ok(page) = page.parse::<usize>() else {
            return Err(ApiError::BadRequest(
                "Pagination parameters are invalid".into(),
            ));
        };
        let size: usize = match &self.page_size {
            None => 100,
            Some(s) => s
                .parse()
                .map_err(|_| ApiError::BadRequest("Pagination parameters are invalid".into()))?,
        };
        if page < 1 || !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(invalid(&page.to_string()));
        }
        let page_count = filtered.div_ceil(size).max(1);
        // RabbitMQ refuses a page only once it starts past the end (the page just after the
        // last full one is empty, not an error).
        if (page - 1).saturating_mul(size) > filtered {
            return Err(ApiError::Invalid(
                "page_out_of_range",
                format!("Page out of range, page: {page} page size: {size}, len: {filtered}"),
            ));
        }
        Ok(Some((page, size, page_count)))
    }

    /// For a list already in name order (see [`ListQuery::name_order_only`]): the range of
    /// it the requested page covers (all of it without paging), after `sort_reverse`.
    pub fn window(&self, filtered: usize) -> ApiResult<std::ops::Range<usize>> {
        match self.page_numbers(filtered)? {
            None => Ok(0..filtered),
            Some((page, size, _)) => {
                let start = ((page - 1) * size).min(filtered);
                Ok(start..(start + size).min(filtered))
            }
        }
    }

    /// The response for a page built from [`ListQuery::window`]: `items` are that window,
    /// in order.
    pub fn respond_window(
        &self,
        items: Vec<Value>,
        filtered: usize,
        total: usize,
    ) -> ApiResult<Value> {
        let items = items.into_iter().map(|v| self.trim(v)).collect::<Vec<_>>();
        match self.page_numbers(filtered)? {
            None => Ok(Value::Array(items)),
            Some((page, size, page_count)) => Ok(serde_json::json!({
                "filtered_count": filtered,
                "item_count": items.len(),
                "items": items,
                "page": page,
                "page_count": page_count,
                "page_size": size,
                "total_count": total,
            })),
        }
    }

    /// Whether `sort_reverse` is set.
    pub fn reversed(&self) -> bool {
        truthy(&self.sort_reverse)
    }

    fn trim(&self, v: Value) -> Value {
        match self.columns.as_deref() {
            Some(c) => {
                let cols: Vec<Vec<&str>> = c
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.split('.').collect())
                    .collect();
                keep_columns(&v, &cols)
            }
            None => v,
        }
    }

    /// Sorts, pages and trims `items` into the response: a page object with `page` set,
    /// else the whole (sorted) array.
    pub fn respond(&self, mut items: Vec<Value>, total: usize) -> ApiResult<Value> {
        if let Some(key) = self.sort.as_deref().filter(|k| !k.is_empty()) {
            let path: Vec<&str> = key.split('.').collect();
            items.sort_by(|a, b| compare(lookup(a, &path), lookup(b, &path)));
            if truthy(&self.sort_reverse) {
                items.reverse();
            }
        } else if truthy(&self.sort_reverse) {
            items.reverse();
        }
        let Some((page, size, page_count)) = self.page_numbers(items.len())? else {
            return Ok(Value::Array(
                items.into_iter().map(|v| self.trim(v)).collect(),
            ));
        };
        let filtered = items.len();
        let start = (page - 1) * size;
        let out: Vec<Value> = items
            .into_iter()
            .skip(start)
            .take(size)
            .map(|v| self.trim(v))
            .collect();
        Ok(serde_json::json!({
            "filtered_count": filtered,
            "item_count": out.len(),
            "items": out,
            "page": page,
            "page_count": page_count,
            "page_size": size,
            "total_count": total,
        }))
    }
}

fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Orders JSON values: missing first, then numbers, then strings, then the rest by text.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (None, None) => Equal,
        (None, _) => Less,
        (_, None) => Greater,
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Number(_)), _) => Less,
        (_, Some(Value::Number(_))) => Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// Keeps only the given dotted paths of an object.
fn keep_columns(v: &Value, cols: &[Vec<&str>]) -> Value {
    let mut out = Map::new();
    for path in cols {
        let Some(found) = lookup(v, path) else {
            continue;
        };
        let mut at = &mut out;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at.insert((*k).to_string(), found.clone());
            } else {
                let next = at
                    .entry((*k).to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                match next {
                    Value::Object(m) => at = m,
                    _ => break,
                }
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(page: Option<&str>, size: Option<&str>) -> ListQuery {
        ListQuery {
            page: page.map(String::from),
            page_size: size.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn pages_count_and_slice() {
        let items: Vec<Value> = (0..25)
            .map(|i| json!({"name": format!("q{i:02}")}))
            .collect();
        let r = q(Some("3"), Some("10")).respond(items.clone(), 30).unwrap();
        assert_eq!(r["page_count"], 3);
        assert_eq!(r["item_count"], 5);
        assert_eq!(r["filtered_count"], 25);
        assert_eq!(r["total_count"], 30);
        assert_eq!(r["items"][0]["name"], "q20");
        assert!(q(Some("4"), Some("10")).respond(items.clone(), 25).is_err());
        // Starting exactly at the end is an empty page, as in RabbitMQ.
        let at_end = q(Some("4"), Some("5"))
            .respond(items[..15].to_vec(), 15)
            .unwrap();
        assert_eq!(at_end["item_count"], 0);
        assert!(q(Some("1"), Some("501"))
            .respond(items.clone(), 25)
            .is_err());
        assert!(q(Some("0"), None).respond(items.clone(), 25).is_err());
        assert!(q(Some("x"), None).respond(items, 25).is_err());
        // An empty list still has one (empty) page.
        assert_eq!(
            q(Some("1"), None).respond(vec![], 0).unwrap()["page_count"],
            1
        );
    }

    #[test]
    fn sorts_by_nested_fields_and_keeps_columns() {
        let items = vec![
            json!({"name": "a", "message_stats": {"publish": 5}, "x": 1}),
            json!({"name": "b", "message_stats": {"publish": 50}, "x": 2}),
            json!({"name": "c", "x": 3}),
        ];
        let query = ListQuery {
            sort: Some("message_stats.publish".into()),
            sort_reverse: Some("true".into()),
            columns: Some("name,message_stats.publish".into()),
            ..Default::default()
        };
        let r = query.respond(items, 3).unwrap();
        assert_eq!(
            r,
            json!([
                {"name": "b", "message_stats": {"publish": 50}},
                {"name": "a", "message_stats": {"publish": 5}},
                {"name": "c"}
            ])
        );
    }

    #[test]
    fn name_filters_plain_and_regex() {
        let plain = ListQuery {
            name: Some("ORD".into()),
            ..Default::default()
        };
        let f = plain.name_filter().unwrap();
        assert!(f("orders") && !f("invoices"));
        let re = ListQuery {
            name: Some("^a.+z$".into()),
            use_regex: Some("true".into()),
            ..Default::default()
        };
        let f = re.name_filter().unwrap();
        assert!(f("abz") && !f("xabz"));
        let bad = ListQuery {
            name: Some("(".into()),
            use_regex: Some("true".into()),
            ..Default::default()
        };
        assert!(bad.name_filter().is_err());
    }
}
