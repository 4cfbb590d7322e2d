#!/usr/bin/env bash
# System packages the stack and the tests need, installed only when missing (Debian 12).
#   bash deploy/install_system_deps.sh        # redis-server, wrk, chromium, java, maven
#   bash deploy/install_system_deps.sh pip    # python3-pip only (bootstrap for `make venv`)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install by hand: $*" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    echo "error: missing $*; run as root or: sudo apt-get install -y $*" >&2
    exit 1
  fi
  if [ "$updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
  # policy-rc.d exit 101: do not auto-start redis-server on 6379 (mab up starts its own).
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" || status=$?
  if [ "$own_policy" -eq 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
  return "${status:-0}"
}

if [ "${1:-}" = "pip" ]; then
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  exit 0
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli (Debian: redis-tools) joins the local Redis Cluster (deploy/redis_cluster.py).
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ! command -v java >/dev/null 2>&1; then
  echo "java not found: installing OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
  missing+=(openjdk-17-jre-headless)
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "mvn not found: installing Maven (needed once to fetch the Kafka jars)"
  missing+=(maven)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt_install "${missing[@]}"
fi

java_major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
if [ "${java_major%%.*}" -lt 17 ] 2>/dev/null; then
  echo "error: Java ${java_major} is too old for Kafka 4; install OpenJDK 17: apt-get install openjdk-17-jre-headless" >&2
  exit 1
fi
echo "system deps ok: redis-server wrk chromium chromedriver java(${java_major}) mvn"
