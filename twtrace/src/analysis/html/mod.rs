//! `twtrace report --html FILE`: one self-contained page (inline SVG and CSS, nothing fetched)
//! with the report's charts and tables. One file per thing: the time series gathered beside
//! the aggregator (`series`), the charts drawn from them (`charts`), the page around them
//! (`page`). The numbers come from the aggregator and its text report; nothing is counted
//! a second way.

pub mod charts;
pub mod page;
pub mod series;

pub use page::{render, HostSection, CHARTS_PER_HOST};
pub use series::Series;
