/*
 * Shared helpers for the zdtm test programs (see README.md for the protocol).
 *
 * Everything here avoids malloc and stdio buffering on purpose: a program's
 * memory layout must not change between its setup and its verification
 * (mem_anon compares /proc/self/maps), and its log must be complete even when
 * it dies.
 */
#ifndef ZDTM_H
#define ZDTM_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Set by the SIGTERM handler: time to verify. */
static volatile sig_atomic_t zdtm_stop;
/* ZDTM_SABOTAGE=N: break state number N on SIGTERM, before verifying. */
static int zdtm_sabotage;
/* Children killed and reaped when the result is written (zdtm_kid). */
static pid_t zdtm_kids[64];
static int zdtm_nkids;

static __attribute__((unused)) void zdtm_on_term(int sig)
{
	(void)sig;
	zdtm_stop = 1;
}

/* printf to stderr (the log) without stdio buffers. */
static __attribute__((unused)) void zdtm_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static __attribute__((unused)) void zdtm_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n, off = 0;

	n = snprintf(buf, sizeof(buf), "[%d] ", getpid());
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf) - 1)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	while (off < n) {
		ssize_t w = write(2, buf + off, n - off);
		if (w <= 0)
			break;
		off += w;
	}
}

/* Setup failed: no ready file, exit 2 (the harness prints the log). */
#define zdtm_die(...)                                   \
	do {                                            \
		zdtm_log("setup failed: " __VA_ARGS__); \
		_exit(2);                               \
	} while (0)

/* Writes text to the file named by environment variable var, atomically. */
static __attribute__((unused)) void zdtm_put(const char *var, const char *text)
{
	const char *path = getenv(var);
	char tmp[4096];
	size_t len = strlen(text), off = 0;
	int fd;

	if (!path)
		zdtm_die("%s is not set", var);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		zdtm_die("open %s: %s", tmp, strerror(errno));
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);
		if (w <= 0)
			zdtm_die("write %s: %s", tmp, strerror(errno));
		off += w;
	}
	if (close(fd) || rename(tmp, path))
		zdtm_die("close/rename %s: %s", tmp, strerror(errno));
}

/*
 * Call first: reads ZDTM_SABOTAGE, makes stdout unbuffered and installs the
 * SIGTERM handler (programs that need another one install it afterwards).
 */
static __attribute__((unused)) void zdtm_init(void)
{
	struct sigaction sa;
	const char *s = getenv("ZDTM_SABOTAGE");

	zdtm_sabotage = s ? atoi(s) : 0;
	setvbuf(stdout, NULL, _IONBF, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = zdtm_on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL))
		zdtm_die("sigaction SIGTERM: %s", strerror(errno));
}

static __attribute__((unused)) void zdtm_ready(void)
{
	zdtm_put("ZDTM_READY", "ready\n");
}

/* Sleeps until SIGTERM. A polling sleep cannot miss the signal. */
static __attribute__((unused)) void zdtm_wait(void)
{
	while (!zdtm_stop) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

static __attribute__((unused)) void zdtm_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Milliseconds from CLOCK_MONOTONIC. */
static __attribute__((unused)) long long zdtm_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Registers a child to kill and reap before the result is written. */
static __attribute__((unused)) void zdtm_kid(pid_t pid)
{
	if (zdtm_nkids < 64)
		zdtm_kids[zdtm_nkids++] = pid;
}

static void zdtm_reap_kids(void)
{
	for (int i = 0; i < zdtm_nkids; i++)
		kill(zdtm_kids[i], SIGKILL);
	for (int i = 0; i < zdtm_nkids; i++)
		while (waitpid(zdtm_kids[i], NULL, 0) < 0 && errno == EINTR)
			;
	zdtm_nkids = 0;
}

static __attribute__((unused)) void zdtm_pass(void) __attribute__((noreturn));
static __attribute__((unused)) void zdtm_pass(void)
{
	zdtm_log("PASS");
	zdtm_reap_kids();
	zdtm_put("ZDTM_RESULT", "PASS\n");
	_exit(0);
}

static __attribute__((unused)) void zdtm_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static __attribute__((unused)) void zdtm_fail(const char *fmt, ...)
{
	char msg[900], line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(line, sizeof(line), "FAIL: %s\n", msg);
	zdtm_log("FAIL: %s", msg);
	zdtm_reap_kids();
	zdtm_put("ZDTM_RESULT", line);
	_exit(1);
}

/* Verification helper: fails the test with the message unless cond holds. */
#define zdtm_check(cond, ...)               \
	do {                                \
		if (!(cond))                \
			zdtm_fail(__VA_ARGS__); \
	} while (0)

/* Waits up to 10 s for `child` to exit (failing the test otherwise, with
 * "the child did not <what> within 10 s") and returns its wait status; the
 * child is reaped, so it is no longer killed at the end. */
static __attribute__((unused)) int zdtm_wait_kid(pid_t child, const char *what)
{
	long long deadline = zdtm_now_ms() + 10000;
	int status;

	for (;;) {
		pid_t r = waitpid(child, &status, WNOHANG);
		zdtm_check(r >= 0, "waitpid: %s", strerror(errno));
		if (r == child)
			break;
		zdtm_check(zdtm_now_ms() < deadline, "the child did not %s within 10 s", what);
		zdtm_sleep_ms(5);
	}
	zdtm_nkids = 0;
	return status;
}

/* The directory of ZDTM_RESULT, where a program keeps its files. */
static __attribute__((unused)) void zdtm_path(char *buf, size_t size, const char *name)
{
	const char *res = getenv("ZDTM_RESULT");
	const char *slash;

	if (!res)
		zdtm_die("ZDTM_RESULT is not set");
	slash = strrchr(res, '/');
	if (!slash)
		snprintf(buf, size, "%s", name);
	else
		snprintf(buf, size, "%.*s/%s", (int)(slash - res), res, name);
}

/* Reads a whole (proc) file into buf, NUL-terminated; returns its length. */
static __attribute__((unused)) ssize_t zdtm_read_file(const char *path, char *buf, size_t size)
{
	size_t off = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t r = read(fd, buf + off, size - 1 - off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		if (r == 0)
			break;
		off += r;
		if (off == size - 1)
			break;
	}
	close(fd);
	buf[off] = 0;
	return off;
}

/* The value of a "Key:\tvalue" line of /proc/self/status-like text, or NULL. */
static __attribute__((unused)) const char *zdtm_field(const char *text, const char *key, char *out, size_t size)
{
	size_t klen = strlen(key);
	const char *p = text;

	while (p && *p) {
		if (!strncmp(p, key, klen) && p[klen] == ':') {
			const char *v = p + klen + 1, *e;
			while (*v == ' ' || *v == '\t')
				v++;
			e = strchr(v, '\n');
			if (!e)
				e = v + strlen(v);
			snprintf(out, size, "%.*s", (int)(e - v), v);
			return out;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return NULL;
}

/* The /proc/self/pagemap entries of n pages from base (bit 63: present;
 * bits 0-54: the page frame, which only root reads). Returns 0, or -1
 * with errno set. */
static __attribute__((unused)) int zdtm_pagemap(uint64_t *out, const void *base, size_t n)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ssize_t got;

	if (fd < 0)
		return -1;
	got = pread(fd, out, n * 8, (off_t)((uintptr_t)base / 4096) * 8);
	close(fd);
	if (got != (ssize_t)(n * 8)) {
		if (got >= 0)
			errno = EIO;
		return -1;
	}
	return 0;
}

/* splitmix64: the pattern generator of every program. */
static inline uint64_t zdtm_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Fills len bytes (a multiple of 8) with the pattern of seed. */
static __attribute__((unused)) void zdtm_fill(void *p, size_t len, uint64_t seed)
{
	uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = zdtm_mix(seed + i);
}

/* Index of the first word that differs from the pattern, or -1. */
static __attribute__((unused)) long zdtm_diff(const void *p, size_t len, uint64_t seed)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != zdtm_mix(seed + i))
			return i;
	return -1;
}

#endif
