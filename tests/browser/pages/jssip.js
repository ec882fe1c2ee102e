// The rig's JsSIP phone: window.phone, with the same methods and events as sipjs.js.
//
// Events (window.rig.emit): connected, disconnected, registered, unregistered,
// registration_failed, incoming, progress, accepted, confirmed, ended, failed.
(() => {
  const media = { mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } };
  let ua = null;
  let session = null;

  function playRemote(connection) {
    connection.addEventListener('track', (event) => window.rig.play(event.streams[0]));
  }

  function follow(newSession, originator) {
    session = newSession;
    const emit = window.rig.emit;
    if (originator === 'remote') {
      emit('incoming', { from: newSession.remote_identity.uri.toString() });
    }
    // An outgoing session has its connection already; an incoming one gets it on answer.
    if (newSession.connection) playRemote(newSession.connection);
    newSession.on('peerconnection', (e) => playRemote(e.peerconnection));
    newSession.on('progress', (e) => emit('progress', { originator: e.originator, status: e.response?.status_code ?? null }));
    newSession.on('accepted', (e) => emit('accepted', { originator: e.originator }));
    newSession.on('confirmed', (e) => emit('confirmed', { originator: e.originator }));
    newSession.on('ended', (e) => emit('ended', { originator: e.originator, cause: e.cause }));
    newSession.on('failed', (e) => emit('failed', {
      originator: e.originator, cause: e.cause, status: e.message?.status_code ?? null,
    }));
  }

  window.phone = {
    library: `JsSIP ${JsSIP.version}`,

    // Connect over WebSocket and register: {wsUrl, uri, password, displayName}.
    register({ wsUrl, uri, password = null, displayName = null }) {
      if (ua) throw new Error('register() was called already');
      const emit = window.rig.emit;
      ua = new JsSIP.UA({
        sockets: [new JsSIP.WebSocketInterface(wsUrl)],
        uri,
        password,
        display_name: displayName,
        register: true,
        session_timers: false,
      });
      ua.on('connected', () => emit('connected', { url: wsUrl }));
      ua.on('disconnected', (e) => emit('disconnected', { error: Boolean(e.error), code: e.code ?? null, reason: e.reason ?? null }));
      ua.on('registered', (e) => emit('registered', { status: e.response.status_code }));
      ua.on('unregistered', (e) => emit('unregistered', { status: e.response?.status_code ?? null }));
      ua.on('registrationFailed', (e) => emit('registration_failed', {
        cause: e.cause, status: e.response?.status_code ?? null,
      }));
      ua.on('newRTCSession', (e) => follow(e.session, e.originator));
      ua.start();
    },

    unregister() {
      ua.unregister();
    },

    call(target) {
      ua.call(target, media);
    },

    answer() {
      if (!session) throw new Error('no incoming call to answer');
      session.answer(media);
    },

    hangup() {
      if (!session) throw new Error('no call to hang up');
      session.terminate();
    },

    inboundBytes() {
      return window.rig.inboundBytes(session?.connection);
    },

    stop() {
      if (ua) ua.stop();
    },
  };
})();
