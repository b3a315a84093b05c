//! QEMU's option-string syntax (`key=value,key=value`), in which a value's commas must be
//! doubled: shared by everything that builds an option from outside text.

use std::borrow::Cow;

/// A value for a QEMU option string (`key=value,...`): QEMU reads `,,` as a comma inside
/// a value, and a lone `,` as the start of the next option, so every comma is doubled.
/// Use it for anything not under your control, paths above all.
///
/// ```
/// use qemu_machine::escape_option_value;
///
/// let path = "/tmp/a,b/disk.img";
/// assert_eq!(escape_option_value(path), "/tmp/a,,b/disk.img");
/// let drive = format!("file={},format=raw", escape_option_value(path));
/// assert_eq!(drive, "file=/tmp/a,,b/disk.img,format=raw");
/// // Nothing to escape: no copy.
/// assert!(matches!(escape_option_value("plain"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn escape_option_value(s: &str) -> Cow<'_, str> {
    if s.contains(',') {
        Cow::Owned(s.replace(',', ",,"))
    } else {
        Cow::Borrowed(s)
    }
}
