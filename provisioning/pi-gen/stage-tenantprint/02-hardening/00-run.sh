#!/bin/bash -e
install -m 0644 files/sshd-tenantprint.conf "${ROOTFS_DIR}/etc/ssh/sshd_config.d/tenantprint.conf"
install -m 0644 files/coredump-off.conf "${ROOTFS_DIR}/etc/sysctl.d/50-tenantprint-coredump.conf"
install -d -m 0755 "${ROOTFS_DIR}/etc/systemd/journald.conf.d"
install -m 0644 files/journald-volatile.conf "${ROOTFS_DIR}/etc/systemd/journald.conf.d/tenantprint.conf"
