import sys, collections, dataclasses, enum, datetime, decimal, fractions, uuid, pathlib, array, queue
from multiprocessing.managers import SyncManager
import multiprocessing.reduction as reduction

Point = collections.namedtuple('Point', 'x y')

@dataclasses.dataclass
class Data:
    a: int
    b: list

class Plain:
    def __init__(self): self.x = 1; self.y = [2, 'three']
    def __eq__(self, o): return type(o) is type(self) and o.__dict__ == self.__dict__

class Slotted:
    __slots__ = ('p', 'q')
    def __init__(self): self.p = 1; self.q = 'two'
    def __eq__(self, o): return type(o) is type(self) and (o.p, o.q) == (self.p, self.q)

class Stateful:
    def __init__(self): self.v = 5
    def __getstate__(self): return {'v': self.v * 10}
    def __setstate__(self, s): self.v = s['v'] // 10
    def __eq__(self, o): return type(o) is type(self) and o.v == self.v

class Reducing:
    def __init__(self, n): self.n = n
    def __reduce_ex__(self, proto): return (Reducing, (self.n,))
    def __eq__(self, o): return type(o) is type(self) and o.n == self.n

class Color(enum.Enum):
    RED = 1

def deep(n):
    v = 'bottom'
    for i in range(n):
        v = [v] if i % 2 else {'k': v}
    return v

def corpus():
    dd = collections.defaultdict(list); dd['a'].append(1)
    c = {
        'OrderedDict': collections.OrderedDict([('z', 1), ('a', 2)]),
        'defaultdict': dd,
        'Counter': collections.Counter('abracadabra'),
        'deque': collections.deque([1, 2, 3], maxlen=5),
        'namedtuple': Point(1, 'y'),
        'dataclass': Data(1, [2]),
        'plain class': Plain(),
        'slots class': Slotted(),
        'getstate class': Stateful(),
        'reduce_ex class': Reducing(7),
        'enum': Color.RED,
        'datetime': datetime.datetime(2026, 12, 1, 5, 24, 31, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        'date': datetime.date(2026, 12, 1),
        'time': datetime.time(5, 24, 31),
        'timedelta': datetime.timedelta(days=3, seconds=5),
        'timezone': datetime.timezone.utc,
        'Decimal': decimal.Decimal('3.14159'),
        'Fraction': fractions.Fraction(22, 7),
        'complex': complex(1.5, -2),
        'UUID': uuid.UUID('12345678-1234-5678-1234-567812345678'),
        'PurePosixPath': pathlib.PurePosixPath('/tmp/a b'),
        'PosixPath': pathlib.PosixPath('/tmp/x'),
        'array': array.array('d', [1.0, 2.5]),
        'bytearray': bytearray(b'\x00\xffab'),
        'set': {1, 'two', (3,)},
        'frozenset': frozenset({4, 5}),
        'ints': [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -2**31, 2**63 - 1, -2**63, 2**64, -2**100, 10**50],
        'nested 100': deep(100),
        'range': range(0, 5),
        'slice': slice(1, 10, 2),
    }
    return c

def shared():
    l = [1, 2]
    selfref = [1]; selfref.append(selfref)
    return {'same list twice': {'a': l, 'b': l}, 'list contains itself': selfref}

def shape(v, seen=None):
    # How a shared value is tied together: identities as first-seen indexes.
    seen = {} if seen is None else seen
    if id(v) in seen: return ('ref', seen[id(v)])
    if isinstance(v, (list, dict)):
        seen[id(v)] = len(seen)
        items = v if isinstance(v, list) else list(v.values())
        return (type(v).__name__, [shape(x, seen) for x in items])
    return repr(v)

import time
SPENT = {}

def through(m, value):
    t = time.time()
    q = m.Queue()
    q.put(value)
    v = q.get(timeout=10)
    SPENT[id(m)] = SPENT.get(id(m), 0) + time.time() - t
    return v

def same(name, want, got):
    if name in shared():
        return shape(got) == shape(want)
    same = type(got) is type(want) and got == want
    if isinstance(want, collections.deque): same = same and got.maxlen == want.maxlen
    if isinstance(want, collections.defaultdict): same = same and got.default_factory is want.default_factory
    return same

def report(label, name, want, got):
    print(f'{label} {name}: ' + ('OK' if same(name, want, got) else f'DIFF {want!r} != {got!r}'))

def main():
    port = int(sys.argv[1])
    protocols = range(0, __import__('pickle').HIGHEST_PROTOCOL + 1)
    ref = SyncManager(); ref.start()
    ours = SyncManager(address=('127.0.0.1', port), authkey=b'abc'); ours.connect()
    orig = reduction.ForkingPickler.dumps.__func__
    for proto in protocols:
        reduction.ForkingPickler.dumps = classmethod(lambda cls, obj, protocol=None, _p=proto: orig(cls, obj, _p))
        for name, value in list(corpus().items()) + list(shared().items()):
            try:
                want = through(ref, value)
            except Exception as e:
                print(f'{proto} {name}: Python itself fails: {e!r}'); continue
            try:
                got = through(ours, value)
            except Exception as e:
                print(f'{proto} {name}: DIFF ours raised {e!r}'); continue
            report(proto, name, want, got)
    print('time ref', SPENT[id(ref)], 'ours', SPENT[id(ours)], file=sys.stderr)
    ref.shutdown()

def relay():
    # Every value goes to `inbox`; a Rust client takes each and puts it on
    # `outbox` as it read it; what comes back must be what Python's own
    # server hands back.
    port = int(sys.argv[1])
    SyncManager.register('inbox'); SyncManager.register('outbox')
    ref = SyncManager(); ref.start()
    ours = SyncManager(address=('127.0.0.1', port), authkey=b'abc'); ours.connect()
    inbox, outbox = ours.inbox(), ours.outbox()
    items = [(n, v) for n, v in list(corpus().items()) + list(shared().items()) if n != 'slots class']
    inbox.put(len(items))
    for _, v in items:
        inbox.put(v)
    for name, v in items:
        report('relayed', name, through(ref, v), outbox.get(timeout=30))
    ref.shutdown()

relay() if sys.argv[2:] == ['relay'] else main()
