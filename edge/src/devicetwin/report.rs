//! A device's status as the cloud stores it: KubeEdge's `status.twins`, `state` and
//! `lastOnlineTime`, built from DeviceTwin's entry.
//!
//! Twins are listed in model order (so `kubectl get devices` shows the model's first property)
//! and always all of them: the cloud replaces the list whole.

use std::collections::BTreeMap;

use wedge_core::device::{self, DeviceStatus, StatusTwin, TwinField};
use wedge_core::twin::{PropertyModel, StampedValue};

use super::Entry;

fn field(value: &StampedValue, model: &PropertyModel) -> TwinField {
    TwinField {
        value: device::format_value(&value.value),
        metadata: BTreeMap::from([
            ("timestamp".to_owned(), value.timestamp_ms.to_string()),
            ("type".to_owned(), device::type_name(model.kind).to_owned()),
        ]),
    }
}

/// The status `entry` reports. Properties whose Device spec says `reportToCloud: false` keep
/// their reported value at the edge.
pub(super) fn status(entry: &Entry) -> DeviceStatus {
    let twins = entry
        .twin
        .properties
        .iter()
        .map(|model| {
            let stored = entry.properties.get(&model.name);
            let to_cloud = entry
                .device
                .spec
                .properties
                .iter()
                .find(|p| p.name == model.name)
                .and_then(|p| p.report_to_cloud)
                .unwrap_or(true);
            StatusTwin {
                property_name: model.name.clone(),
                reported: stored
                    .and_then(|s| s.twin.reported.as_ref())
                    .filter(|_| to_cloud)
                    .map(|v| field(v, model)),
                observed_desired: stored
                    .and_then(|s| s.twin.desired.as_ref())
                    .map(|v| field(v, model)),
            }
        })
        .collect();
    DeviceStatus {
        twins,
        state: Some(device::state_name(entry.twin.state).to_owned()),
        last_online_time: entry.last_online.clone(),
    }
}
