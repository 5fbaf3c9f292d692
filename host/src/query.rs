//! Query semantics shared by every data set: condition matching, value
//! comparison and ordering, as Dataverse's QueryExpression defines them (text
//! compares case-insensitively, a missing attribute is null).

use std::cmp::Ordering;

use crate::model::{Condition, ConditionOperator, Entity, Filter, LogicalOperator, Order, Query, Value};

/// Most records one page may hold.
pub const MAX_PAGE_SIZE: u32 = 5000;
/// Most values an `in` condition may list.
pub const MAX_IN_VALUES: usize = 1000;

/// Where a page of a query starts, as its paging cookie says. A query without an
/// order pages by id (cookie `id:<last id>`, a cursor: stable while records are
/// added); one with an order pages by offset (cookie `offset:<n>`). Every data set
/// (the store's pipeline, the in-memory one of `plughost test`) uses this format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageStart {
    First,
    After(uuid::Uuid),
    Offset(usize),
}

impl PageStart {
    /// Reads `query`'s cookie; a cookie of the other kind, or garbage, is refused.
    pub fn of(query: &Query) -> Result<PageStart, String> {
        let Some(c) = &query.paging_cookie else { return Ok(PageStart::First) };
        let bad = || format!("paging cookie '{c}' does not belong to this query");
        match (query.orders.is_empty(), c.strip_prefix("id:"), c.strip_prefix("offset:")) {
            (true, Some(id), _) => uuid::Uuid::parse_str(id).map(PageStart::After).map_err(|_| bad()),
            (false, _, Some(n)) => n.parse().map(PageStart::Offset).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// The id a page by id starts after.
    pub fn after(self) -> Option<uuid::Uuid> {
        match self {
            PageStart::After(id) => Some(id),
            _ => None,
        }
    }
}

/// Cuts the page `start` begins out of `found` (the matching records in the query's
/// order; when paging by id, only those after the cursor) and makes the next cookie.
pub fn cut_page(query: &Query, mut found: Vec<Entity>, start: PageStart) -> crate::model::EntityCollection {
    let page = query.page_size.unwrap_or(MAX_PAGE_SIZE) as usize;
    found.truncate(query.top.map_or(usize::MAX, |t| t as usize));
    let first = match start {
        PageStart::Offset(n) => n.min(found.len()),
        _ => 0,
    };
    let end = first.saturating_add(page).min(found.len());
    let more = end < found.len();
    let entities: Vec<Entity> = found.drain(first..end).map(|e| project(e, &query.columns)).collect();
    let cookie = more.then(|| match (query.orders.is_empty(), entities.last().and_then(|e| e.id)) {
        (true, Some(last)) => format!("id:{last}"),
        _ => format!("offset:{end}"),
    });
    crate::model::EntityCollection { entities, more_records: more, paging_cookie: cookie }
}

/// Checks a query's shape before running it: operators get the number of values they need.
pub fn validate(query: &Query) -> Result<(), String> {
    crate::model::check_name(&query.entity_name)?;
    let all = query.criteria.conditions.iter().chain(query.criteria.groups.iter().flat_map(|g| &g.conditions));
    for c in all {
        crate::model::check_name(&c.attribute).map_err(|m| format!("condition attribute {m}"))?;
        let n = c.values.len();
        let ok = match c.operator {
            ConditionOperator::Null | ConditionOperator::NotNull => n == 0,
            ConditionOperator::In | ConditionOperator::NotIn => (1..=MAX_IN_VALUES).contains(&n),
            _ => n == 1,
        };
        if !ok {
            return Err(format!("condition on '{}' with operator {:?} has {n} value(s)", c.attribute, c.operator));
        }
        if matches!(c.operator, ConditionOperator::Like | ConditionOperator::NotLike)
            && !matches!(c.values[0], Value::Text(_))
        {
            return Err(format!("'like' on '{}' needs a text pattern", c.attribute));
        }
    }
    for column in query.columns.iter().chain(query.orders.iter().map(|o| &o.attribute)) {
        crate::model::check_name(column).map_err(|m| format!("column {m}"))?;
    }
    if query.page_size == Some(0) || query.page_size.is_some_and(|p| p > MAX_PAGE_SIZE) {
        return Err(format!("page size must be between 1 and {MAX_PAGE_SIZE}"));
    }
    Ok(())
}

/// Whether `entity` satisfies `filter`.
pub fn matches(entity: &Entity, filter: &Filter) -> bool {
    let conditions = filter.conditions.iter().map(|c| condition(entity, c));
    let groups = filter.groups.iter().map(|g| combine(g.operator, g.conditions.iter().map(|c| condition(entity, c))));
    combine(filter.operator, conditions.chain(groups))
}

fn combine(op: LogicalOperator, mut results: impl Iterator<Item = bool>) -> bool {
    match op {
        LogicalOperator::And => results.all(|b| b),
        LogicalOperator::Or => results.any(|b| b),
    }
}

fn condition(entity: &Entity, c: &Condition) -> bool {
    let value = entity.attributes.get(&c.attribute).unwrap_or(&Value::Null);
    let is_null = matches!(value, Value::Null);
    let cmp = |v: &Value| compare(value, v);
    match c.operator {
        ConditionOperator::Null => is_null,
        ConditionOperator::NotNull => !is_null,
        _ if is_null => false,
        ConditionOperator::Equal => cmp(&c.values[0]) == Some(Ordering::Equal),
        ConditionOperator::NotEqual => cmp(&c.values[0]).is_some_and(|o| o != Ordering::Equal),
        ConditionOperator::Greater => cmp(&c.values[0]) == Some(Ordering::Greater),
        ConditionOperator::GreaterEqual => cmp(&c.values[0]).is_some_and(|o| o != Ordering::Less),
        ConditionOperator::Less => cmp(&c.values[0]) == Some(Ordering::Less),
        ConditionOperator::LessEqual => cmp(&c.values[0]).is_some_and(|o| o != Ordering::Greater),
        ConditionOperator::In => c.values.iter().any(|v| cmp(v) == Some(Ordering::Equal)),
        ConditionOperator::NotIn => c.values.iter().all(|v| cmp(v).is_some_and(|o| o != Ordering::Equal)),
        ConditionOperator::Like | ConditionOperator::NotLike => {
            let (Value::Text(text), Value::Text(pattern)) = (value, &c.values[0]) else { return false };
            like(&text.to_lowercase(), &pattern.to_lowercase()) == (c.operator == ConditionOperator::Like)
        }
    }
}

/// Compares two values of comparable types; `None` when they are not comparable.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value::*;
    match (a, b) {
        (Null, Null) => Some(Ordering::Equal),
        (Text(x), Text(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Integer(x), Integer(y)) => Some(x.cmp(y)),
        (Float(x), Float(y)) => x.partial_cmp(y),
        (Integer(x), Float(y)) => (*x as f64).partial_cmp(y),
        (Float(x), Integer(y)) => x.partial_cmp(&(*y as f64)),
        (Decimal(x) | Money(x), Decimal(y) | Money(y)) => Some(compare_decimal(x, y)),
        (Decimal(x) | Money(x), Integer(y)) => Some(compare_decimal(x, &y.to_string())),
        (Integer(x), Decimal(y) | Money(y)) => Some(compare_decimal(&x.to_string(), y)),
        (Boolean(x), Boolean(y)) => Some(x.cmp(y)),
        (DateTime(x), DateTime(y)) => Some(x.cmp(y)),
        (Guid(x), Guid(y)) => Some(x.cmp(y)),
        (OptionSet(x), OptionSet(y)) => Some(x.cmp(y)),
        (Integer(x), OptionSet(y)) => Some(x.cmp(&i64::from(*y))),
        (OptionSet(x), Integer(y)) => Some(i64::from(*x).cmp(y)),
        (Reference(x), Reference(y)) => Some(x.id.cmp(&y.id)),
        (Reference(x), Guid(y)) => Some(x.id.cmp(y)),
        (Guid(x), Reference(y)) => Some(x.cmp(&y.id)),
        _ => None,
    }
}

/// Compares canonical decimal texts exactly ("-1.50" < "2").
pub fn compare_decimal(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> (bool, &str, &str) {
        let (neg, digits) = match s.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, s),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        (neg, int.trim_start_matches('0'), frac.trim_end_matches('0'))
    }
    let (an, ai, af) = parts(a);
    let (bn, bi, bf) = parts(b);
    let a_zero = ai.is_empty() && af.is_empty();
    let b_zero = bi.is_empty() && bf.is_empty();
    let (an, bn) = (an && !a_zero, bn && !b_zero);
    let magnitude = ai.len().cmp(&bi.len()).then_with(|| ai.cmp(bi)).then_with(|| af.cmp(bf));
    match (an, bn) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    }
}

/// SQL LIKE: '%' any run, '_' one character.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Iterative matcher with backtracking to the last '%': O(len(t) * len(p)) worst case.
    let (mut ti, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '%')
}

/// Orders records by `orders`; nulls first, as SQL Server sorts them ascending.
pub fn sort(records: &mut [Entity], orders: &[Order]) {
    records.sort_by(|a, b| {
        for o in orders {
            let va = a.attributes.get(&o.attribute).unwrap_or(&Value::Null);
            let vb = b.attributes.get(&o.attribute).unwrap_or(&Value::Null);
            let ord = match (va, vb) {
                (Value::Null, Value::Null) => Ordering::Equal,
                (Value::Null, _) => Ordering::Less,
                (_, Value::Null) => Ordering::Greater,
                _ => compare(va, vb).unwrap_or(Ordering::Equal),
            };
            let ord = if o.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.id.cmp(&b.id)
    });
}

/// Keeps only `columns` (all when empty).
pub fn project(mut entity: Entity, columns: &[String]) -> Entity {
    if !columns.is_empty() {
        entity.attributes.retain(|k, _| columns.iter().any(|c| c == k));
    }
    entity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_matches_sql_semantics() {
        assert!(like("contoso ltd", "contoso%"));
        assert!(like("contoso", "c_ntoso"));
        assert!(like("abc", "%"));
        assert!(like("", "%"));
        assert!(!like("abc", "a_"));
        assert!(like("aXbXc", "a%b%c"));
        assert!(!like("ab", "a%c"));
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(compare_decimal("1.50", "1.5"), Ordering::Equal);
        assert_eq!(compare_decimal("-1.5", "1"), Ordering::Less);
        assert_eq!(compare_decimal("10", "9.99"), Ordering::Greater);
        assert_eq!(compare_decimal("-10", "-9.99"), Ordering::Less);
        assert_eq!(compare_decimal("-0", "0.00"), Ordering::Equal);
        assert_eq!(compare_decimal("0.001", "0.01"), Ordering::Less);
    }

    #[test]
    fn filters_combine_conditions_and_groups() {
        let e = Entity::new("account").with("name", Value::Text("Contoso".into())).with("n", Value::Integer(5));
        let cond = |a: &str, op, v: Vec<Value>| Condition { attribute: a.into(), operator: op, values: v };
        let f = Filter {
            operator: LogicalOperator::And,
            conditions: vec![cond("name", ConditionOperator::Like, vec![Value::Text("con%".into())])],
            groups: vec![crate::model::ConditionGroup {
                operator: LogicalOperator::Or,
                conditions: vec![
                    cond("n", ConditionOperator::Greater, vec![Value::Integer(10)]),
                    cond("missing", ConditionOperator::Null, vec![]),
                ],
            }],
        };
        assert!(matches(&e, &f));
        let f2 = Filter {
            conditions: vec![cond("n", ConditionOperator::In, vec![Value::Integer(1), Value::Integer(2)])],
            ..Default::default()
        };
        assert!(!matches(&e, &f2));
    }
}
