//! KubeEdge's MQTT topic scheme on the edge, parsed and built in one place.
//!
//! Requests arrive on `$hw/events/device/<id>/twin/update`, `.../twin/get`, `.../state/update`
//! and `$hw/events/node/<node>/membership/{get,detail}`; answers and announcements go to the
//! `/result`, `/delta`, `/document` and `updated` topics beside them, and device data for apps
//! to `$ke/events/device/<id>/data/update`.

/// The filters EventBus subscribes to for `node`, to serve KubeEdge's requests.
pub fn request_filters(node: &str) -> Vec<String> {
    vec![
        "$hw/events/device/+/twin/update".to_owned(),
        "$hw/events/device/+/twin/get".to_owned(),
        "$hw/events/device/+/state/update".to_owned(),
        format!("$hw/events/node/{node}/membership/get"),
        format!("$hw/events/node/{node}/membership/detail"),
    ]
}

/// A request on one of KubeEdge's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// A device (or its mapper) reports actual values or an app sets expected ones.
    TwinUpdate(&'a str),
    /// The whole twin of a device is asked for.
    TwinGet(&'a str),
    /// A device's connection state.
    StateUpdate(&'a str),
    /// The devices bound to this node are asked for (`detail` answers the same).
    Membership {
        /// Whether it was `membership/detail`.
        detail: bool,
    },
}

/// The request `topic` carries for `node`, if it is one of KubeEdge's.
pub fn parse<'a>(node: &str, topic: &'a str) -> Option<Request<'a>> {
    if let Some(rest) = topic.strip_prefix("$hw/events/device/") {
        let (device, what) = rest.split_once('/')?;
        if device.is_empty() {
            return None;
        }
        return match what {
            "twin/update" => Some(Request::TwinUpdate(device)),
            "twin/get" => Some(Request::TwinGet(device)),
            "state/update" => Some(Request::StateUpdate(device)),
            _ => None,
        };
    }
    let rest = topic.strip_prefix("$hw/events/node/")?;
    let (n, what) = rest.split_once('/')?;
    if n != node {
        return None;
    }
    match what {
        "membership/get" => Some(Request::Membership { detail: false }),
        "membership/detail" => Some(Request::Membership { detail: true }),
        _ => None,
    }
}

/// Where the answer to `request` goes.
pub fn result_topic(node: &str, request: &Request<'_>) -> String {
    match request {
        Request::TwinUpdate(d) => format!("$hw/events/device/{d}/twin/update/result"),
        Request::TwinGet(d) => format!("$hw/events/device/{d}/twin/get/result"),
        Request::StateUpdate(d) => format!("$hw/events/device/{d}/state/update/result"),
        Request::Membership { detail: false } => {
            format!("$hw/events/node/{node}/membership/get/result")
        }
        Request::Membership { detail: true } => {
            format!("$hw/events/node/{node}/membership/detail/result")
        }
    }
}

/// Where desired values that differ from reported ones are announced (mappers listen here).
pub fn delta(device: &str) -> String {
    format!("$hw/events/device/{device}/twin/update/delta")
}

/// Where every change of a twin is announced, with the value before and after.
pub fn document(device: &str) -> String {
    format!("$hw/events/device/{device}/twin/update/document")
}

/// Where reported values are published for apps.
pub fn data_update(device: &str) -> String {
    format!("$ke/events/device/{device}/data/update")
}

/// Where devices joining and leaving this node are announced.
pub fn membership_updated(node: &str) -> String {
    format!("$hw/events/node/{node}/membership/updated")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wedge_core::topic;

    #[test]
    fn requests_parse_and_answer_beside_themselves() {
        let cases = [
            (
                "$hw/events/device/thermo-1/twin/update",
                Request::TwinUpdate("thermo-1"),
                "$hw/events/device/thermo-1/twin/update/result",
            ),
            (
                "$hw/events/device/fan-1/twin/get",
                Request::TwinGet("fan-1"),
                "$hw/events/device/fan-1/twin/get/result",
            ),
            (
                "$hw/events/device/fan-1/state/update",
                Request::StateUpdate("fan-1"),
                "$hw/events/device/fan-1/state/update/result",
            ),
            (
                "$hw/events/node/edge-a/membership/get",
                Request::Membership { detail: false },
                "$hw/events/node/edge-a/membership/get/result",
            ),
        ];
        for (topic, request, result) in cases {
            assert_eq!(parse("edge-a", topic), Some(request.clone()), "{topic}");
            assert_eq!(result_topic("edge-a", &request), result);
            assert!(
                request_filters("edge-a")
                    .iter()
                    .any(|f| topic::matches(f, topic)),
                "{topic} is subscribed"
            );
        }
    }

    #[test]
    fn answers_and_other_nodes_are_not_requests() {
        for topic in [
            "$hw/events/device/thermo-1/twin/update/result",
            "$hw/events/device/thermo-1/twin/update/delta",
            "$hw/events/node/edge-b/membership/get",
            "$hw/events/node/edge-a/membership/updated",
            "$ke/events/device/thermo-1/data/update",
            "sensors/temp",
        ] {
            assert_eq!(parse("edge-a", topic), None, "{topic}");
            assert!(
                !request_filters("edge-a")
                    .iter()
                    .any(|f| topic::matches(f, topic)),
                "{topic} is not subscribed"
            );
        }
        // `+` matches an empty level, so this one arrives, and is not taken for a device.
        assert_eq!(parse("edge-a", "$hw/events/device//twin/update"), None);
    }
}
