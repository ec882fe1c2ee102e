// The rig's SIP.js phone: window.phone, with the same methods and events as jssip.js, on
// SIP.js's Web.SessionManager (public API: one object for the transport, the registration
// and the calls, remote audio played in <audio id="remote">).
(() => {
  const { Web, UserAgent } = SIP;
  let manager = null;
  let session = null;
  let answered = false;
  let hungUpHere = false;

  window.phone = {
    library: `SIP.js ${SIP.version}`,

    // {wsUrl, uri, password, displayName, supported}: `supported` adds option tags to
    // every request's Supported (SIP.js sends "outbound", and "path, gruu" on a REGISTER).
    async register({ wsUrl, uri, password = null, displayName = null, supported = [] }) {
      if (manager) throw new Error('register() was called already');
      const emit = window.rig.emit;
      const user = UserAgent.makeURI(uri)?.user;
      manager = new Web.SessionManager(wsUrl, {
        aor: uri,
        media: {
          constraints: { audio: true, video: false },
          remote: { audio: document.getElementById('remote') },
        },
        userAgentOptions: {
          authorizationUsername: password === null ? undefined : user,
          authorizationPassword: password ?? undefined,
          displayName: displayName ?? undefined,
          // SIP.js logs every message at "log"; the rig keeps warnings and errors.
          logLevel: 'warn',
          sipExtensionExtraSupported: supported,
          sessionDescriptionHandlerFactoryOptions: { peerConnectionConfiguration: { iceServers: [] } },
        },
        delegate: {
          onServerConnect: () => emit('connected', { url: wsUrl }),
          onServerDisconnect: (error) => emit('disconnected', { error: Boolean(error), reason: error ? String(error) : null }),
          onRegistered: () => emit('registered', {}),
          onUnregistered: () => emit('unregistered', {}),
          onCallCreated: (created) => {
            session = created;
            answered = false;
            hungUpHere = false;
          },
          onCallReceived: (received) => {
            session = received;
            emit('incoming', { from: received.remoteIdentity.uri.toString() });
          },
          onCallAnswered: () => {
            answered = true;
            emit('confirmed', {});
          },
          onCallHangup: () => {
            const originator = hungUpHere ? 'local' : 'remote';
            emit(answered ? 'ended' : 'failed', { originator, cause: null });
          },
        },
      });
      await manager.connect();
      await manager.register({
        requestDelegate: {
          onReject: (response) => emit('registration_failed', {
            cause: response.message.reasonPhrase, status: response.message.statusCode,
          }),
        },
      });
    },

    async unregister() {
      await manager.unregister();
    },

    async call(target) {
      await manager.call(target);
    },

    async answer() {
      if (!session) throw new Error('no incoming call to answer');
      await manager.answer(session);
    },

    async hangup() {
      if (!session) throw new Error('no call to hang up');
      hungUpHere = true;
      await manager.hangup(session);
    },

    inboundBytes() {
      return window.rig.inboundBytes(session?.sessionDescriptionHandler?.peerConnection);
    },

    async stop() {
      if (manager) await manager.disconnect();
    },
  };
})();
