/* SPDX-License-Identifier: Apache-2.0
 *
 * A stand-in for Tstat (the TCP STatistic and Analysis Tool), written for probeforge's tests.
 * It is not Tstat: it has Tstat's command line and output layout, and does just enough with
 * them for the tests to prove that a build, its configuration and its service work.
 *
 *   tstat [-s OUTDIR] [-N net.conf] [-T runtime.conf] [-A mask] ... file.pcap ...
 *   tstat -l -i IF [-s OUTDIR] [-N net.conf] [-T runtime.conf] ...
 *
 * Output goes to OUTDIR/<YYYY_MM_DD_HH_MM>.out/ (time of the first packet), as Tstat's does:
 * log_tcp_complete has one line per TCP connection seen from SYN to FIN both ways (or RST),
 * log_tcp_nocomplete the others; the header line names the columns as Tstat's does
 * ("#15#c_ip:1 c_port:2 ..."), with fewer of them. runtime.conf is read with -T and re-read
 * when its mtime changes; [log] log_tcp_complete / log_tcp_nocomplete switch the two logs.
 * Lines of runtime.conf must have Tstat's exact "key = value" form, else it exits as Tstat
 * does. -N validates the internal networks; -A XORs internal IPv4 addresses in the logs.
 * Live capture (-l -i) writes each closed connection about a second after it closed and
 * stops cleanly on SIGINT or SIGTERM.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <pcap.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_NETS 256

struct flow {
  uint32_t ip[2];   /* network byte order; [0] is the client (sender of the SYN) */
  uint16_t port[2]; /* host byte order */
  unsigned long pkts[2], bytes[2];
  int syn, fin[2], rst, written;
  double first, last, closed_wall;
};

static struct flow *flows;
static size_t nflows, cap_flows;
static uint32_t net_addr[MAX_NETS], net_mask[MAX_NETS];
static int nnets;
static uint32_t anon_mask;
static const char *outbase, *runtime_conf;
static char outdir[4096];
static FILE *log_complete, *log_nocomplete;
static int want_complete = 1, want_nocomplete = 1;
static time_t runtime_mtime;
static volatile sig_atomic_t stopping;
static pcap_t *live;
static unsigned long packets_seen, tcp_packets;

static void die(const char *msg, const char *arg) {
  fprintf(stderr, "%s%s%s\n", msg, arg ? " " : "", arg ? arg : "");
  exit(1);
}

static double now_wall(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return tv.tv_sec + tv.tv_usec / 1e6;
}

/* -- runtime.conf: "[section]" and "key = value" lines, '#' comments ------------------- */

static void read_runtime_conf(int first) {
  FILE *f = fopen(runtime_conf, "r");
  char line[1024], section[64] = "";
  int lineno = 0;
  struct stat st;
  if (!f)
    die("err: Could not open", runtime_conf);
  if (fstat(fileno(f), &st) == 0)
    runtime_mtime = st.st_mtime;
  while (fgets(line, sizeof line, f)) {
    char key[128], rest[900];
    long value;
    char *p = line, *end, *eq;
    lineno++;
    while (*p == ' ' || *p == '\t')
      p++;
    if (*p == '#' || *p == '\n' || *p == '\0')
      continue;
    if (*p == '[') {
      if (sscanf(p, "[%63[^]]]", section) != 1)
        die("ini reader: bad section in", runtime_conf);
      continue;
    }
    /* Exactly: key, blanks, '=', blanks, digits, then nothing or blanks and a comment. */
    eq = strchr(p, '=');
    if (!eq || eq == p || (eq[-1] != ' ' && eq[-1] != '\t') || (eq[1] != ' ' && eq[1] != '\t') ||
        sscanf(p, "%127[A-Za-z0-9_] = %899[^\n]", key, rest) != 2) {
      fprintf(stderr, "ini reader: syntax error at line %d of %s\n", lineno, runtime_conf);
      exit(1);
    }
    errno = 0;
    value = strtol(rest, &end, 10);
    if (end == rest || errno || (*end && *end != ' ' && *end != '\t')) {
      fprintf(stderr, "ini reader: syntax error at line %d of %s\n", lineno, runtime_conf);
      exit(1);
    }
    while (*end == ' ' || *end == '\t')
      end++;
    if (*end && *end != '#') {
      fprintf(stderr, "ini reader: syntax error at line %d of %s\n", lineno, runtime_conf);
      exit(1);
    }
    if (strcmp(section, "log") == 0) {
      if (value != 0 && value != 1) {
        fprintf(stderr, "ini reader: expected 0|1 value near '%s'\n", key);
        exit(1);
      }
      if (strcmp(key, "log_tcp_complete") == 0)
        want_complete = (int)value;
      else if (strcmp(key, "log_tcp_nocomplete") == 0)
        want_nocomplete = (int)value;
    }
  }
  fclose(f);
  if (!first)
    printf("runtime configuration reloaded: log_tcp_complete = %d\n", want_complete);
}

static void check_runtime_conf(void) {
  struct stat st;
  if (runtime_conf && stat(runtime_conf, &st) == 0 && st.st_mtime != runtime_mtime)
    read_runtime_conf(0);
}

/* -- internal networks (-N) ------------------------------------------------------------ */

static void read_nets(const char *path) {
  FILE *f = fopen(path, "r");
  char line[512];
  if (!f)
    die("Cannot open internal networks file", path);
  while (fgets(line, sizeof line, f)) {
    char *p = line, *slash, *end;
    struct in_addr addr, mask;
    unsigned char buf6[16];
    while (isspace((unsigned char)*p))
      p++;
    if (*p == '#' || *p == '\0')
      continue;
    for (end = p; *end && !isspace((unsigned char)*end) && *end != '#'; end++)
      ;
    *end = '\0';
    slash = strchr(p, '/');
    if (slash)
      *slash++ = '\0';
    if (inet_pton(AF_INET6, p, buf6) == 1)
      continue; /* IPv6 networks are accepted and not used */
    if (inet_pton(AF_INET, p, &addr) != 1 || !slash)
      die("Invalid network in", path);
    if (strchr(slash, '.')) {
      if (inet_pton(AF_INET, slash, &mask) != 1)
        die("Invalid netmask in", path);
    } else {
      char *e;
      long bits = strtol(slash, &e, 10);
      if (*e || bits < 0 || bits > 32)
        die("Invalid mask length in", path);
      mask.s_addr = bits ? htonl(0xFFFFFFFFu << (32 - bits)) : 0;
    }
    if (nnets == MAX_NETS)
      die("Too many internal networks in", path);
    net_addr[nnets] = addr.s_addr & mask.s_addr;
    net_mask[nnets++] = mask.s_addr;
  }
  fclose(f);
}

static int internal(uint32_t ip) {
  int i;
  if (nnets == 0)
    return 1; /* like Tstat: without -N every network is internal */
  for (i = 0; i < nnets; i++)
    if ((ip & net_mask[i]) == net_addr[i])
      return 1;
  return 0;
}

/* -- output ---------------------------------------------------------------------------- */

static void mkdirs(const char *path) {
  char tmp[4096], *p;
  snprintf(tmp, sizeof tmp, "%s", path);
  for (p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(tmp, 0775);
      *p = '/';
    }
  if (mkdir(tmp, 0775) != 0 && errno != EEXIST)
    die("Cannot create directory", tmp);
}

static const char HEADER[] =
    "#15#c_ip:1 c_port:2 c_pkts_all:3 c_bytes_uniq:4 s_ip:5 s_port:6 s_pkts_all:7 "
    "s_bytes_uniq:8 first:9 last:10 durat:11 c_isint:12 s_isint:13\n";

static FILE *open_log(const char *name) {
  char path[4200];
  FILE *f;
  snprintf(path, sizeof path, "%s/%s", outdir, name);
  f = fopen(path, "a");
  if (!f)
    die("Could not open file", path);
  fputs(HEADER, f);
  fflush(f);
  return f;
}

static void ensure_outdir(double first_ts) {
  time_t t = (time_t)first_ts;
  char date[64];
  if (outdir[0])
    return;
  strftime(date, sizeof date, "%Y_%m_%d_%H_%M", localtime(&t));
  snprintf(outdir, sizeof outdir, "%s/%s.out", outbase, date);
  mkdirs(outdir);
  printf("created new outdir %s\n", outdir);
  fflush(stdout);
}

static void open_logs(void) {
  if (!outdir[0])
    return;
  if (want_complete && !log_complete)
    log_complete = open_log("log_tcp_complete");
  if (want_nocomplete && !log_nocomplete)
    log_nocomplete = open_log("log_tcp_nocomplete");
}

static void write_flow(FILE *f, const struct flow *fl) {
  char c[INET_ADDRSTRLEN], s[INET_ADDRSTRLEN];
  struct in_addr a;
  int cint = internal(fl->ip[0]), sint = internal(fl->ip[1]);
  a.s_addr = fl->ip[0] ^ (cint ? htonl(anon_mask) : 0);
  inet_ntop(AF_INET, &a, c, sizeof c);
  a.s_addr = fl->ip[1] ^ (sint ? htonl(anon_mask) : 0);
  inet_ntop(AF_INET, &a, s, sizeof s);
  fprintf(f, "%s %u %lu %lu %s %u %lu %lu %.6f %.6f %.6f %d %d\n", c, fl->port[0], fl->pkts[0],
          fl->bytes[0], s, fl->port[1], fl->pkts[1], fl->bytes[1], fl->first * 1000.0,
          fl->last * 1000.0, (fl->last - fl->first) * 1000.0, cint, sint);
}

/* Write closed connections (closed before `before`, wall clock), or all at the end. */
static void flush_flows(double before, int at_end) {
  size_t i;
  open_logs();
  for (i = 0; i < nflows; i++) {
    struct flow *fl = &flows[i];
    int complete = fl->syn && ((fl->fin[0] && fl->fin[1]) || fl->rst);
    if (fl->written)
      continue;
    if (complete && (at_end || (fl->closed_wall > 0 && fl->closed_wall < before))) {
      if (want_complete && log_complete)
        write_flow(log_complete, fl);
      fl->written = 1;
    } else if (at_end) {
      if (want_nocomplete && log_nocomplete)
        write_flow(log_nocomplete, fl);
      fl->written = 1;
    }
  }
  if (log_complete)
    fflush(log_complete);
  if (log_nocomplete)
    fflush(log_nocomplete);
}

/* -- packets --------------------------------------------------------------------------- */

static int datalink;

static void packet(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes) {
  size_t off, caplen = h->caplen, i;
  unsigned ethertype, ihl, thl, total;
  uint32_t src, dst;
  uint16_t sport, dport;
  unsigned char flags;
  double ts = h->ts.tv_sec + h->ts.tv_usec / 1e6;
  struct flow *fl = NULL;
  int dir = 0;
  (void)user;

  packets_seen++;
  switch (datalink) {
  case DLT_EN10MB:
    if (caplen < 14)
      return;
    ethertype = bytes[12] << 8 | bytes[13];
    off = 14;
    if (ethertype == 0x8100 && caplen >= 18) {
      ethertype = bytes[16] << 8 | bytes[17];
      off = 18;
    }
    break;
  case DLT_LINUX_SLL:
    if (caplen < 16)
      return;
    ethertype = bytes[14] << 8 | bytes[15];
    off = 16;
    break;
  case DLT_RAW:
    ethertype = 0x0800;
    off = 0;
    break;
  default:
    return;
  }
  if (ethertype != 0x0800 || caplen < off + 20 || (bytes[off] >> 4) != 4)
    return;
  ihl = (bytes[off] & 0x0F) * 4;
  total = bytes[off + 2] << 8 | bytes[off + 3];
  if (bytes[off + 9] != 6 || caplen < off + ihl + 20)
    return;
  memcpy(&src, bytes + off + 12, 4);
  memcpy(&dst, bytes + off + 16, 4);
  off += ihl;
  sport = bytes[off] << 8 | bytes[off + 1];
  dport = bytes[off + 2] << 8 | bytes[off + 3];
  thl = (bytes[off + 12] >> 4) * 4;
  flags = bytes[off + 13];
  tcp_packets++;

  ensure_outdir(ts);
  for (i = nflows; i-- > 0;) {
    struct flow *f = &flows[i];
    if (f->written)
      continue;
    if (f->ip[0] == src && f->port[0] == sport && f->ip[1] == dst && f->port[1] == dport) {
      fl = f, dir = 0;
      break;
    }
    if (f->ip[0] == dst && f->port[0] == dport && f->ip[1] == src && f->port[1] == sport) {
      fl = f, dir = 1;
      break;
    }
  }
  if (!fl) {
    if (nflows == cap_flows) {
      cap_flows = cap_flows ? cap_flows * 2 : 64;
      flows = realloc(flows, cap_flows * sizeof *flows);
      if (!flows)
        die("out of memory", NULL);
    }
    fl = &flows[nflows++];
    memset(fl, 0, sizeof *fl);
    fl->ip[0] = src, fl->ip[1] = dst, fl->port[0] = sport, fl->port[1] = dport;
    fl->first = ts;
    fl->syn = (flags & 0x12) == 0x02; /* SYN without ACK: the client opens */
  }
  fl->pkts[dir]++;
  if (total >= ihl + thl)
    fl->bytes[dir] += total - ihl - thl;
  fl->last = ts;
  if (flags & 0x01)
    fl->fin[dir] = 1;
  if (flags & 0x04)
    fl->rst = 1;
  if (!fl->closed_wall && ((fl->fin[0] && fl->fin[1]) || fl->rst))
    fl->closed_wall = now_wall();
}

static void on_signal(int sig) {
  (void)sig;
  stopping = 1;
  if (live)
    pcap_breakloop(live);
}

static void usage(void) {
  fprintf(stderr, "Usage:\n\ttstat [-htuvwgSL0] [-d[-d]] [-s dir] [-N file] [-T runtime.conf]"
                  " [-A mask] [-l] [-i interface] [-E snaplen] <file1 file2>\n"
                  "(probeforge test stand-in for Tstat %s)\n",
          PACKAGE_VERSION);
}

int main(int argc, char *argv[]) {
  static struct option long_options[] = {{"keyfile", required_argument, 0, 1},
                                         {"keybase64", required_argument, 0, 1},
                                         {"keyvalue", required_argument, 0, 1},
                                         {"enc", no_argument, 0, 1},
                                         {0, 0, 0, 0}};
  const char *interface = NULL, *nets = NULL;
  int c, live_flag = 0, snaplen = 65535, i;
  char errbuf[PCAP_ERRBUF_SIZE];
  struct sigaction sa;

  while ((c = getopt_long(argc, argv, "hvtuwgSL0dcs:N:M:C:Y:W:B:T:G:z:A:H:f:E:i:lr:R:F:ZP63",
                          long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      usage();
      return 1;
    case 'v':
      fprintf(stderr, "Version: tstat %s (probeforge test stand-in)\n", PACKAGE_VERSION);
      return 1;
    case 's':
      outbase = optarg;
      break;
    case 'N':
      nets = optarg;
      break;
    case 'T':
      runtime_conf = optarg;
      break;
    case 'A':
      anon_mask = (uint32_t)strtoul(optarg, NULL, 0);
      break;
    case 'i':
      interface = optarg;
      break;
    case 'l':
      live_flag = 1;
      break;
    case 'E':
      snaplen = atoi(optarg);
      break;
    case 'z':
      if (!freopen(optarg, "w", stdout))
        die("Error creating", optarg);
      dup2(fileno(stdout), fileno(stderr));
      break;
    case '?':
      fprintf(stderr, "\nArgument error: unknown option '%s'\n", argv[optind - 1]);
      usage();
      return 1;
    default:
      break; /* accepted, not implemented by the stand-in */
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (nets)
    read_nets(nets);
  else
    printf("Warning: -N option not specified.\n\tAll subnets are assumed to be internal\n");
  if (runtime_conf)
    read_runtime_conf(1);

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  if (live_flag) {
    if (!interface)
      die("Live capture needs -i interface", NULL);
    if (!outbase)
      outbase = "stdin.out";
    live = pcap_open_live(interface, snaplen, 1, 200, errbuf);
    if (!live)
      die("pcap_open_live:", errbuf);
    datalink = pcap_datalink(live);
    printf("Live capture on interface %s\n", interface);
    while (!stopping) {
      if (pcap_dispatch(live, -1, packet, NULL) < 0 && !stopping)
        die("pcap_dispatch:", pcap_geterr(live));
      check_runtime_conf();
      flush_flows(now_wall() - 1.0, 0);
    }
    flush_flows(0, 1);
    pcap_close(live);
  } else {
    if (optind >= argc) {
      usage();
      return 1;
    }
    for (i = optind; i < argc; i++) {
      pcap_t *p = pcap_open_offline(argv[i], errbuf);
      char base[4096];
      if (!p)
        die("Could not open trace:", errbuf);
      if (!outbase) {
        snprintf(base, sizeof base, "%s.out", argv[i]);
        outbase = strdup(base);
      }
      datalink = pcap_datalink(p);
      printf("Running file '%s'\n", argv[i]);
      pcap_loop(p, -1, packet, NULL);
      pcap_close(p);
    }
    flush_flows(0, 1);
  }
  printf("%lu packets seen, %lu TCP packets traced\n", packets_seen, tcp_packets);
  if (log_complete)
    fclose(log_complete);
  if (log_nocomplete)
    fclose(log_nocomplete);
  return 0;
}
