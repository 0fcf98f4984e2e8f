//! Reading a process's Prometheus metrics as a test or a bench does: the text at `/metrics`,
//! and the samples of one metric by its labels.

use std::io::{Read, Write};

/// The Prometheus text a process serves at `http://{addr}/metrics`: empty when it does not
/// answer (a process that is down has no figures).
pub fn scrape(addr: &str) -> String {
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(tcp, "GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n");
    let mut text = String::new();
    let _ = tcp.read_to_string(&mut text);
    text
}

/// The sum of the samples of metric `name` in `text` whose labels include every pair of
/// `labels` (0 when there are none).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP wedge_x_total What.\n# TYPE wedge_x_total counter\nwedge_x_total{node=\"a\",reason=\"r\"} 2\nwedge_x_total{node=\"b\",reason=\"r\"} 3\nwedge_x_total_other{node=\"a\"} 100\nwedge_y 7\n";

    #[test]
    fn samples_are_summed_by_name_and_labels() {
        assert_eq!(sum(TEXT, "wedge_x_total", &[]), 5.0);
        assert_eq!(sum(TEXT, "wedge_x_total", &[("node", "a")]), 2.0);
        assert_eq!(sum(TEXT, "wedge_x_total", &[("node", "c")]), 0.0);
        assert_eq!(sum(TEXT, "wedge_y", &[]), 7.0);
    }

    #[test]
    fn a_process_that_is_down_has_no_figures() {
        let port = crate::wait::free_port();
        assert_eq!(scrape(&format!("127.0.0.1:{port}")), "");
    }
}
