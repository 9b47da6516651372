import struct, sys
# usage: pcap2streams.py file.pcap server_port out_prefix
fn, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(fn, 'rb').read()
magic = struct.unpack('<I', data[:4])[0]
if magic in (0xa1b2c3d4, 0xa1b23c4d): e = '<'
else: e = '>'
linktype = struct.unpack(e+'I', data[20:24])[0]
off = 24
segs = {'c2s': {}, 's2c': {}}
conns = set()
while off + 16 <= len(data):
    ts_s, ts_u, incl, orig = struct.unpack(e+'IIII', data[off:off+16]); off += 16
    pkt = data[off:off+incl]; off += incl
    if linktype == 1: l2 = 14; et = struct.unpack('>H', pkt[12:14])[0]
    elif linktype == 113: l2 = 16; et = struct.unpack('>H', pkt[14:16])[0]
    elif linktype == 276: l2 = 20; et = struct.unpack('>H', pkt[0:2])[0]
    else: raise SystemExit('linktype %d' % linktype)
    ip = pkt[l2:]
    if (ip[0] >> 4) == 4:
        ihl = (ip[0] & 15) * 4; proto = ip[9]; tot = struct.unpack('>H', ip[2:4])[0]
        tcp = ip[ihl:tot]
    else:
        proto = ip[6]; plen = struct.unpack('>H', ip[4:6])[0]; tcp = ip[40:40+plen]
    if proto != 6: continue
    sp, dp, seq = struct.unpack('>HHI', tcp[:8])
    doff = (tcp[12] >> 4) * 4
    payload = tcp[doff:]
    key = (sp, dp) if dp == port else (dp, sp)
    conns.add(key)
    d = 'c2s' if dp == port else 's2c'
    if payload:
        segs[d].setdefault(key, {})[seq] = payload
if len(conns) != 1: print('warning: connections', conns, file=sys.stderr)
for d in ('c2s', 's2c'):
    buf = b''
    for key in sorted(segs[d]):
        for seq in sorted(segs[d][key]):  # no wraparound expected in short captures
            buf += segs[d][key][seq]
    open(out + '.' + d, 'wb').write(buf)
    print(out + '.' + d, len(buf))
